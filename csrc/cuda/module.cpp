// pybind11 bindings of the CUDA module fastseg._C_cuda, compiled by the host compiler.
//
// The module does not link libtorch: tensors cross as raw device pointers (Python ints from
// `tensor.data_ptr()`) plus their shapes, and the stream as an int
// (`torch.cuda.current_stream().cuda_stream`). The caller (fastseg/ops/_cuda.py) allocates every
// output and scratch buffer with torch on the right device and keeps them alive; these bindings
// validate the arguments (second line after the Python wrapper), release the GIL and launch.
// std::invalid_argument surfaces in Python as ValueError, std::runtime_error (a failed launch) as
// RuntimeError.
//
// The CUDA runtime is linked statically and touches the driver only when called, so importing
// this module works on a machine without a GPU or a driver; device_count() then returns 0.
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "fastseg/resample.h"
#include "kernels.cuh"

#include "binding.h"

namespace py = pybind11;
using namespace fastseg;
using namespace fastseg::bind;

namespace {

// in (outer, n_in, inner) float32 -> out (outer, n_out, inner) float32; coef (outer, n_in + 2 *
// SPLINE_PAD, inner) float64 scratch for order 3, 0 otherwise. Pointers are Python ints.
void resample_axis(std::uintptr_t in_ptr, std::uintptr_t out_ptr, std::uintptr_t coef_ptr, int64_t outer,
                   int64_t n_in, int64_t inner, int64_t n_out, int order, std::uintptr_t stream) {
  require(order == 0 || order == 1 || order == 3, "order must be 0, 1 or 3, got " + std::to_string(order));
  require(outer >= 0 && inner >= 0,
          "outer and inner must be >= 0, got outer=" + std::to_string(outer) + ", inner=" + std::to_string(inner));
  require(n_in > 0, "n_in (the resampled axis) must be positive, got " + std::to_string(n_in));
  require(n_out > 0, "n_out must be positive, got " + std::to_string(n_out));
  const float* in = device_pointer<const float>(in_ptr, outer * n_in * inner, "in");
  float* out = device_pointer<float>(out_ptr, outer * n_out * inner, "out");
  double* coef = order == 3 ? device_pointer<double>(coef_ptr, outer * (n_in + 2 * kSplinePad) * inner, "coef") : nullptr;
  py::gil_scoped_release release;
  cuda::resample_axis(in, out, coef, outer, n_in, inner, n_out, order, stream_of(stream));
}

template <typename L>
void resample_seg_typed(std::uintptr_t in_ptr, std::uintptr_t out_ptr, const int64_t* in_shape,
                        const int64_t* out_shape, const int* orders, bool strict, bool zero_is_label,
                        std::uintptr_t stream) {
  const L* in = device_pointer<const L>(in_ptr, in_shape[0] * in_shape[1] * in_shape[2] * in_shape[3], "in");
  L* out = device_pointer<L>(out_ptr, out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3], "out");
  py::gil_scoped_release release;
  cuda::resample_seg<L>(in, out, in_shape, out_shape, orders, strict, zero_is_label, stream_of(stream));
}

// in (C, D, H, W) labels -> out (C, D', H', W') of the same dtype.
void resample_seg(std::uintptr_t in_ptr, std::uintptr_t out_ptr, const std::vector<int64_t>& in_shape,
                  const std::vector<int64_t>& out_shape, const std::vector<int>& orders, bool strict,
                  bool zero_is_label, const std::string& dtype, std::uintptr_t stream) {
  require(in_shape.size() == 4, "in_shape must be (C, D, H, W), got " + list_str(in_shape));
  require(out_shape.size() == 4, "out_shape must be (C, D', H', W'), got " + list_str(out_shape));
  require(orders.size() == 3, "orders must have 3 entries (z, y, x), got " + list_str(orders));
  require(in_shape[0] == out_shape[0], "in_shape and out_shape must have the same channel count, got " +
                                           list_str(in_shape) + " and " + list_str(out_shape));
  for (int a = 0; a < 4; ++a)
    require(in_shape[a] >= 0 && out_shape[a] >= 0,
            "shapes must not be negative, got " + list_str(in_shape) + " and " + list_str(out_shape));
  for (int a = 0; a < 3; ++a) {
    require(orders[a] == 0 || orders[a] == 1, "segmentation orders must be 0 or 1, got " + list_str(orders));
    require(out_shape[a + 1] > 0, "out_shape spatial entries must be positive, got " + list_str(out_shape));
    require(in_shape[a + 1] > 0, "in_shape spatial entries must be positive (seg must not be empty), got " +
                                     list_str(in_shape));
  }
  // Calls resample_seg_typed with the label type named by a typed null pointer.
  auto launch = [&](auto tag) {
    using L = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    resample_seg_typed<L>(in_ptr, out_ptr, in_shape.data(), out_shape.data(), orders.data(), strict, zero_is_label,
                          stream);
  };
  if (dtype == "int8") return launch(static_cast<const int8_t*>(nullptr));
  if (dtype == "uint8") return launch(static_cast<const uint8_t*>(nullptr));
  if (dtype == "int16") return launch(static_cast<const int16_t*>(nullptr));
  if (dtype == "uint16") return launch(static_cast<const uint16_t*>(nullptr));
  if (dtype == "int32") return launch(static_cast<const int32_t*>(nullptr));
  if (dtype == "int64") return launch(static_cast<const int64_t*>(nullptr));
  throw std::invalid_argument("dtype must be one of 'int8', 'uint8', 'int16', 'uint16', 'int32', 'int64', got '" +
                              dtype + "'");
}

// Number of CUDA devices; 0 when there is no device or no (recent enough) driver.
int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the error so that it does not surface at the next launch check
    return 0;
  }
  return count;
}

}  // namespace

// Features that bind themselves from their own files (bind_*.cpp in this folder).
namespace fastseg::bind {
void register_components(py::module_& m);
void register_inference(py::module_& m);
}  // namespace fastseg::bind

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "fastseg CUDA kernels on raw device pointers. Use fastseg.ops, which validates and dispatches.";
  m.attr("SPLINE_PAD") = kSplinePad;
  m.def("resample_axis", &resample_axis, py::arg("in_ptr"), py::arg("out_ptr"), py::arg("coef_ptr"), py::arg("outer"),
        py::arg("n_in"), py::arg("inner"), py::arg("n_out"), py::arg("order"), py::arg("stream"),
        "One axis of a separable resample: float32 (outer, n_in, inner) -> (outer, n_out, inner). coef_ptr: float64 "
        "scratch (outer, n_in + 2 * SPLINE_PAD, inner) for order 3, 0 otherwise.");
  m.def("resample_seg", &resample_seg, py::arg("in_ptr"), py::arg("out_ptr"), py::arg("in_shape"),
        py::arg("out_shape"), py::arg("orders"), py::arg("strict"), py::arg("zero_is_label"), py::arg("dtype"),
        py::arg("stream"), "Segmentation resample by label vote: (C, D, H, W) -> (C, D', H', W'), same dtype.");
  m.def("device_count", &device_count, "Number of CUDA devices; 0 without a device or driver.");
  fastseg::bind::register_components(m);
  fastseg::bind::register_inference(m);
}
