// pybind11 bindings of the CPU module fastseg._C. Each binding validates (the Python wrappers in
// fastseg.ops have validated already; these checks are the second line), allocates the output,
// releases the GIL and launches. std::invalid_argument surfaces in Python as ValueError.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "binding.h"
#include "kernels.h"
#include "scratch.h"

namespace py = pybind11;
using namespace fastseg;
using namespace fastseg::bind;

namespace {

py::array_t<float> resample_axis(const py::array_t<float, 0>& x, int64_t n_out, int order) {
  require(x.ndim() == 3, "x must be (outer, n, inner), got shape " + shape_str(x));
  require_c_contiguous(x, "x");
  require(order == 0 || order == 1 || order == 3, "order must be 0, 1 or 3, got " + std::to_string(order));
  require(n_out > 0, "n_out must be positive, got " + std::to_string(n_out));
  require(x.shape(1) > 0, "the resampled axis is empty");
  const int64_t outer = x.shape(0), n_in = x.shape(1), inner = x.shape(2);
  py::array_t<float> out({outer, n_out, inner});
  const float* src = x.data();
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    cpu::resample_axis(src, dst, outer, n_in, inner, n_out, order);
  }
  return out;
}

std::array<int64_t, 4> shape4(const py::array& x, const char* name) {
  require(x.ndim() == 4, std::string(name) + " must be (C, D, H, W), got shape " + shape_str(x));
  return {x.shape(0), x.shape(1), x.shape(2), x.shape(3)};
}

int64_t group_count(const std::array<int64_t, 4>& s, int group_axis) {
  require(group_axis >= 0 && group_axis <= 3, "group_axis must be 0..3, got " + std::to_string(group_axis));
  return s[0] * (group_axis == 0 ? 1 : s[group_axis]);
}

py::tuple minmax_groups(const py::array_t<float, 0>& x, int group_axis) {
  const auto s = shape4(x, "x");
  require_c_contiguous(x, "x");
  const int64_t G = group_count(s, group_axis);
  py::array_t<float> lo(G), hi(G);
  int64_t nonfinite;
  const float* src = x.data();
  float* l = lo.mutable_data();
  float* h = hi.mutable_data();
  {
    py::gil_scoped_release release;
    nonfinite = cpu::minmax_groups(src, s.data(), group_axis, l, h);
  }
  return py::make_tuple(lo, hi, nonfinite);
}

void clip_groups(py::array_t<float, 0> x, int group_axis, const py::array_t<float, 0>& lo,
                 const py::array_t<float, 0>& hi) {
  const auto s = shape4(x, "x");
  require_c_contiguous(x, "x");
  const int64_t G = group_count(s, group_axis);
  require(lo.size() == G && hi.size() == G, "lo/hi must hold " + std::to_string(G) + " values");
  float* dst = x.mutable_data();
  const float* l = lo.data();
  const float* h = hi.data();
  py::gil_scoped_release release;
  cpu::clip_groups(dst, s.data(), group_axis, l, h);
}

template <typename L>
py::array resample_seg_typed(const py::array& seg, const std::array<int64_t, 4>& in_shape,
                             const std::array<int64_t, 4>& out_shape, const std::array<int, 3>& orders, bool strict) {
  py::array_t<L> out({out_shape[0], out_shape[1], out_shape[2], out_shape[3]});
  const L* src = static_cast<const L*>(seg.data());
  L* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    cpu::resample_seg<L>(src, dst, in_shape.data(), out_shape.data(), orders.data(), strict);
  }
  return out;
}

py::array resample_seg(const py::array& seg, const std::vector<int64_t>& new_shape, const std::vector<int>& orders,
                       bool strict) {
  const auto in_shape = shape4(seg, "seg");
  require_c_contiguous(seg, "seg");
  require(new_shape.size() == 3, "new_shape must have 3 entries");
  require(orders.size() == 3, "orders must have 3 entries");
  for (int a = 0; a < 3; ++a) {
    require(orders[a] == 0 || orders[a] == 1, "segmentation orders must be 0 or 1, got " + std::to_string(orders[a]));
    require(new_shape[a] > 0, "new_shape entries must be positive");
    require(in_shape[a + 1] > 0, "seg must not be empty");
  }
  const std::array<int64_t, 4> out_shape{in_shape[0], new_shape[0], new_shape[1], new_shape[2]};
  const std::array<int, 3> o{orders[0], orders[1], orders[2]};
  const auto dt = seg.dtype();
  if (is_type<int8_t>(dt)) return resample_seg_typed<int8_t>(seg, in_shape, out_shape, o, strict);
  if (is_type<uint8_t>(dt)) return resample_seg_typed<uint8_t>(seg, in_shape, out_shape, o, strict);
  if (is_type<int16_t>(dt)) return resample_seg_typed<int16_t>(seg, in_shape, out_shape, o, strict);
  if (is_type<uint16_t>(dt)) return resample_seg_typed<uint16_t>(seg, in_shape, out_shape, o, strict);
  if (is_type<int32_t>(dt)) return resample_seg_typed<int32_t>(seg, in_shape, out_shape, o, strict);
  if (is_type<int64_t>(dt)) return resample_seg_typed<int64_t>(seg, in_shape, out_shape, o, strict);
  throw std::invalid_argument("seg dtype must be an integer type of 8 to 64 bits, got " +
                              py::str(static_cast<py::object>(dt)).cast<std::string>());
}

// Calls f with a typed null pointer naming x's element type.
template <typename F>
auto dispatch_numeric(const py::array& x, F&& f) {
  const auto dt = x.dtype();
  if (is_type<float>(dt)) return f(static_cast<const float*>(nullptr));
  if (is_type<double>(dt)) return f(static_cast<const double*>(nullptr));
  if (is_type<int8_t>(dt)) return f(static_cast<const int8_t*>(nullptr));
  if (is_type<uint8_t>(dt)) return f(static_cast<const uint8_t*>(nullptr));
  if (is_type<int16_t>(dt)) return f(static_cast<const int16_t*>(nullptr));
  if (is_type<uint16_t>(dt)) return f(static_cast<const uint16_t*>(nullptr));
  if (is_type<int32_t>(dt)) return f(static_cast<const int32_t*>(nullptr));
  if (is_type<uint32_t>(dt)) return f(static_cast<const uint32_t*>(nullptr));
  if (is_type<int64_t>(dt)) return f(static_cast<const int64_t*>(nullptr));
  throw std::invalid_argument("unsupported image dtype " + py::str(static_cast<py::object>(dt)).cast<std::string>() +
                              "; expected a float or integer type");
}

const uint8_t* mask_pointer(const py::object& mask, const py::array& x) {
  if (mask.is_none()) return nullptr;
  auto m = mask.cast<py::array>();
  require(m.dtype().itemsize() == 1 && (m.dtype().kind() == 'b' || m.dtype().kind() == 'u'),
          "mask must be bool or uint8");
  require(m.size() == x.size(), "mask must have as many elements as the image: " + std::to_string(m.size()) + " vs " +
                                    std::to_string(x.size()));
  require_c_contiguous(m, "mask");
  return static_cast<const uint8_t*>(m.data());
}

py::dict moments(const py::array& x, const py::object& mask) {
  require_c_contiguous(x, "x");
  const uint8_t* m = mask_pointer(mask, x);
  const int64_t n = x.size();
  const void* data = x.data();
  cpu::Moments r = dispatch_numeric(x, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    py::gil_scoped_release release;
    return cpu::moments<T>(static_cast<const T*>(data), m, n);
  });
  py::dict d;
  d["count"] = r.count;
  d["nonfinite"] = r.nonfinite;
  d["mean"] = r.mean;
  d["std"] = r.std;
  d["min"] = r.min;
  d["max"] = r.max;
  return d;
}

py::tuple normalize_apply(const py::array& x, const py::object& mask, float lo, float hi, float shift, float denom,
                          bool clip) {
  require_c_contiguous(x, "x");
  const uint8_t* m = mask_pointer(mask, x);
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  py::array_t<float> out(shape);
  float* dst = out.mutable_data();
  const int64_t n = x.size();
  const void* data = x.data();
  const AffineParams p{lo, hi, shift, denom, clip ? 1 : 0};
  const int64_t nonfinite = dispatch_numeric(x, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    py::gil_scoped_release release;
    return cpu::normalize_apply<T>(static_cast<const T*>(data), dst, m, n, p);
  });
  return py::make_tuple(out, nonfinite);
}

}  // namespace

// Features that bind themselves from their own files (bind_*.cpp in this folder).
namespace fastseg::bind {
void register_components(py::module_& m);
void register_inference(py::module_& m);
void register_sampling(py::module_& m);
void register_metrics(py::module_& m);
void register_surface(py::module_& m);
void register_spatial(py::module_& m);
void register_intensity(py::module_& m);
}  // namespace fastseg::bind

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastseg CPU kernels (OpenMP). Use fastseg.ops, which validates and dispatches.";
  m.def("resample_axis", &resample_axis, py::arg("x"), py::arg("n_out"), py::arg("order"));
  m.def("minmax_groups", &minmax_groups, py::arg("x"), py::arg("group_axis"));
  m.def("clip_groups", &clip_groups, py::arg("x"), py::arg("group_axis"), py::arg("lo"), py::arg("hi"));
  m.def("resample_seg", &resample_seg, py::arg("seg"), py::arg("new_shape"), py::arg("orders"), py::arg("strict"));
  m.def("moments", &moments, py::arg("x"), py::arg("mask") = py::none());
  m.def("normalize_apply", &normalize_apply, py::arg("x"), py::arg("mask"), py::arg("lo"), py::arg("hi"),
        py::arg("shift"), py::arg("denom"), py::arg("clip"));
  m.def("max_threads", []() { return omp_get_max_threads(); });
  // omp_set_num_threads sets the calling thread's count: it governs the parallel regions that the
  // kernels open when called from this (Python) thread, not those opened from other threads.
  m.def(
      "set_num_threads",
      [](int n) {
        require(n >= 1, "the thread count must be at least 1, got " + std::to_string(n));
        omp_set_num_threads(n);
      },
      py::arg("n"));
  m.def("release_scratch", &cpu::release_scratch,
        "Returns the memory cached for the kernels' scratch buffers to the OS; returns the bytes freed.");
  fastseg::bind::register_components(m);
  fastseg::bind::register_inference(m);
  fastseg::bind::register_sampling(m);
  fastseg::bind::register_metrics(m);
  fastseg::bind::register_surface(m);
  fastseg::bind::register_spatial(m);
  fastseg::bind::register_intensity(m);
}
