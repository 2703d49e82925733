// Binding of the intensity augmentations (intensity.cpp, fastseg/intensity.h) in fastseg._C.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "binding.h"
#include "intensity.h"

namespace py = pybind11;

namespace fastseg::bind {
namespace {

template <typename T>
const T* parameter(const py::array& a, const char* name, std::initializer_list<int64_t> shape) {
  require(is_type<T>(a.dtype()), std::string(name) + " has the wrong dtype: " + dtype_str(a));
  require_c_contiguous(a, name);
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  int i = 0;
  for (int64_t s : shape) ok = ok && a.shape(i++) == s;
  require(ok, std::string(name) + " has the wrong shape " + shape_str(a));
  return static_cast<const T*>(a.data());
}

// data (B, C, D, H, W) float32 and seg (B, 1, D, H, W) int16, changed in place; the parameters as
// cpu::IntensityBatch describes them.
void augment_intensity(py::array data_any, py::array seg_any, const py::array& flags,
                       const py::array& blur_sigma, const py::array& brightness, const py::array& contrast,
                       const py::array& lowres_size, const py::array& gamma, const py::array& mask, int outside,
                       int replacement) {
  require(is_type<float>(data_any.dtype()), "data must be float32, got " + dtype_str(data_any));
  require(is_type<int16_t>(seg_any.dtype()), "seg must be int16, got " + dtype_str(seg_any));
  require(data_any.ndim() == 5, "data must be (B, C, D, H, W), got shape " + shape_str(data_any));
  require(seg_any.ndim() == 5 && seg_any.shape(0) == data_any.shape(0) && seg_any.shape(1) == 1 &&
              seg_any.shape(2) == data_any.shape(2) && seg_any.shape(3) == data_any.shape(3) &&
              seg_any.shape(4) == data_any.shape(4),
          "seg must be (B, 1, D, H, W) of data's shape " + shape_str(data_any) + ", got " + shape_str(seg_any));
  require_c_contiguous(data_any, "data");
  require_c_contiguous(seg_any, "seg");
  require(data_any.writeable() && seg_any.writeable(), "data and seg must be writable");
  require(outside >= -32768 && outside <= 32767 && replacement >= -32768 && replacement <= 32767,
          "outside and replacement must fit int16");
  cpu::IntensityBatch p{};
  p.batch = data_any.shape(0);
  p.channels = data_any.shape(1);
  for (int a = 0; a < 3; ++a) p.shape[a] = data_any.shape(a + 2);
  const int64_t B = p.batch, C = p.channels;
  p.flags = parameter<int32_t>(flags, "flags", {B});
  p.blur_sigma = parameter<double>(blur_sigma, "blur_sigma", {B, C, 3});
  p.brightness = parameter<float>(brightness, "brightness", {B, C});
  p.contrast = parameter<float>(contrast, "contrast", {B, C});
  p.lowres_size = parameter<int32_t>(lowres_size, "lowres_size", {B, C, 3});
  p.gamma = parameter<float>(gamma, "gamma", {B, C, 2});
  p.mask = parameter<uint8_t>(mask, "mask", {C});
  for (int64_t i = 0; i < B * C * 3; ++i) {
    const int64_t n = p.shape[i % 3], m = p.lowres_size[i];
    require(m == 0 || (m >= 1 && m <= n), "lowres_size must be 0 or in [1, " + std::to_string(n) + "], got " +
                                              std::to_string(m));
  }
  p.outside = static_cast<int16_t>(outside);
  p.replacement = static_cast<int16_t>(replacement);
  auto* data = static_cast<float*>(data_any.mutable_data());
  auto* seg = static_cast<int16_t*>(seg_any.mutable_data());
  py::gil_scoped_release release;
  cpu::augment_intensity(data, seg, p);
}

}  // namespace

void register_intensity(py::module_& m) {
  m.def("augment_intensity", &augment_intensity, py::arg("data"), py::arg("seg"), py::arg("flags"),
        py::arg("blur_sigma"), py::arg("brightness"), py::arg("contrast"), py::arg("lowres_size"), py::arg("gamma"),
        py::arg("mask"), py::arg("outside"), py::arg("replacement"),
        "nnU-Net's intensity augmentations, mirroring, masking and the padding label's replacement, in place on "
        "data (B, C, D, H, W) float32 and seg (B, 1, D, H, W) int16, with per-sample parameters "
        "(see fastseg.ops.intensity).");
}

}  // namespace fastseg::bind
