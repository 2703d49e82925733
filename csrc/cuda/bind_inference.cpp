#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace fastseg::bind {
void register_inference(py::module_& m) { (void)m; }
}  // namespace fastseg::bind
