// Helpers of the fastseg._C bindings: argument checks whose messages carry the values found
// (std::invalid_argument surfaces in Python as ValueError).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <type_traits>

namespace fastseg::bind {

namespace py = pybind11;

inline void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// A shape as Python prints it: (3, 4), (5,).
inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += std::to_string(a.shape(i)) + (i + 1 < a.ndim() ? ", " : "");
  return s + (a.ndim() == 1 ? ",)" : ")");
}

inline std::string dtype_str(const py::array& a) {
  return py::str(static_cast<py::object>(a.dtype())).cast<std::string>();
}

inline void require_c_contiguous(const py::array& a, const char* name) {
  require(a.flags() & py::array::c_style, std::string(name) + " must be C-contiguous (the Python wrapper copies it)");
}

// dtype identity by kind and size: numpy may hand out distinct but equal dtype objects.
template <typename T>
bool is_type(const py::dtype& dt) {
  const char kind = std::is_floating_point_v<T> ? 'f' : (std::is_signed_v<T> ? 'i' : 'u');
  return dt.kind() == kind && dt.itemsize() == static_cast<py::ssize_t>(sizeof(T));
}

}  // namespace fastseg::bind
