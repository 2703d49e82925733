// Binding of the spatial augmentation (spatial.cpp, fastseg/spatial.h) in fastseg._C.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "binding.h"
#include "spatial.h"

namespace py = pybind11;

namespace fastseg::bind {
namespace {

// Writes the patch of `data` (C, D, H, W) float32 into out (C, P0, P1, P2) float32 and, when given,
// the patch of `seg` (1, D, H, W) int8/int16 into seg_out (1, P0, P1, P2) int16. matrix (3, 4) float64:
// input index = matrix[:, :3] @ (z, y, x) + matrix[:, 3]; box (3, 2) int64: [lo, hi) of the input voxels
// that exist per axis (within the volume).
void affine_patch(const py::array_t<float, 0>& data, const py::object& seg, const py::array& out_any,
                  const py::object& seg_out, const py::array_t<double, 0>& matrix, const py::array_t<int64_t, 0>& box,
                  int outside, float noise_std, uint64_t noise_seed) {
  require(data.ndim() == 4, "data must be (C, D, H, W), got shape " + shape_str(data));
  // the outputs are written in place: no conversion may hand the kernel a copy
  require(is_type<float>(out_any.dtype()), "out must be float32, got " + dtype_str(out_any));
  auto out = py::reinterpret_borrow<py::array_t<float, 0>>(out_any);
  require(out.ndim() == 4 && out.shape(0) == data.shape(0),
          "out must be (C, P0, P1, P2) with data's " + std::to_string(data.shape(0)) + " channels, got shape " +
              shape_str(out));
  require_c_contiguous(data, "data");
  require_c_contiguous(out, "out");
  require(out.writeable(), "out must be writable");
  require(matrix.ndim() == 2 && matrix.shape(0) == 3 && matrix.shape(1) == 4,
          "matrix must be (3, 4), got shape " + shape_str(matrix));
  require(box.ndim() == 2 && box.shape(0) == 3 && box.shape(1) == 2, "box must be (3, 2), got shape " + shape_str(box));
  require(outside >= -32768 && outside <= 32767, "outside must fit int16, got " + std::to_string(outside));
  require(noise_std >= 0.0f, "noise_std must be >= 0, got " + std::to_string(noise_std));
  cpu::AffinePatch p{};
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 4; ++c) p.m[r][c] = matrix.at(r, c);
    const int64_t lo = box.at(r, 0), hi = box.at(r, 1), n = data.shape(r + 1);
    require(0 <= lo && lo <= hi && hi <= n, "box axis " + std::to_string(r) + " must satisfy 0 <= lo <= hi <= " +
                                                std::to_string(n) + ", got [" + std::to_string(lo) + ", " +
                                                std::to_string(hi) + ")");
    p.box.lo[r] = lo;
    p.box.hi[r] = hi;
    p.patch[r] = out.shape(r + 1);
  }
  p.outside = static_cast<int16_t>(outside);
  p.noise_std = noise_std;
  p.noise_seed = noise_seed;
  const int64_t in_shape[3] = {data.shape(1), data.shape(2), data.shape(3)};
  const int64_t channels = data.shape(0);
  const float* src = data.data();
  float* dst = out.mutable_data();
  require(seg.is_none() == seg_out.is_none(), "seg and seg_out must both be given or both be None");
  if (seg.is_none()) {
    py::gil_scoped_release release;
    cpu::affine_patch<int16_t>(src, channels, in_shape, nullptr, dst, nullptr, p);
    return;
  }
  auto labels = py::cast<py::array>(seg);
  auto labels_out_any = py::cast<py::array>(seg_out);
  require(is_type<int16_t>(labels_out_any.dtype()), "seg_out must be int16, got " + dtype_str(labels_out_any));
  auto labels_out = py::reinterpret_borrow<py::array_t<int16_t, 0>>(labels_out_any);
  require(labels.ndim() == 4 && labels.shape(0) == 1 && labels.shape(1) == in_shape[0] &&
              labels.shape(2) == in_shape[1] && labels.shape(3) == in_shape[2],
          "seg must be (1, D, H, W) of data's spatial shape, got " + shape_str(labels));
  require(labels_out.ndim() == 4 && labels_out.shape(0) == 1 && labels_out.shape(1) == p.patch[0] &&
              labels_out.shape(2) == p.patch[1] && labels_out.shape(3) == p.patch[2],
          "seg_out must be (1, P0, P1, P2) of out's spatial shape, got " + shape_str(labels_out));
  require_c_contiguous(labels, "seg");
  require_c_contiguous(labels_out, "seg_out");
  require(labels_out.writeable(), "seg_out must be writable");
  int16_t* seg_dst = labels_out.mutable_data();
  if (is_type<int16_t>(labels.dtype())) {
    const auto* s = static_cast<const int16_t*>(labels.data());
    py::gil_scoped_release release;
    cpu::affine_patch<int16_t>(src, channels, in_shape, s, dst, seg_dst, p);
  } else if (is_type<int8_t>(labels.dtype())) {
    const auto* s = static_cast<const int8_t*>(labels.data());
    py::gil_scoped_release release;
    cpu::affine_patch<int8_t>(src, channels, in_shape, s, dst, seg_dst, p);
  } else {
    require(false, "seg must be int8 or int16, got " + dtype_str(labels));
  }
}

}  // namespace

void register_spatial(py::module_& m) {
  m.def("affine_patch", &affine_patch, py::arg("data"), py::arg("seg"), py::arg("out"), py::arg("seg_out"),
        py::arg("matrix"), py::arg("box"), py::arg("outside"), py::arg("noise_std"), py::arg("noise_seed"),
        "An affine patch of data (C, D, H, W) float32 (trilinear, zero outside box) and seg (1, D, H, W) int8/int16 "
        "(nearest, `outside` beyond box) into out / seg_out; input index = matrix[:, :3] @ (z, y, x) + matrix[:, 3]; "
        "optional Gaussian noise of std noise_std (seeded by noise_seed).");
}

}  // namespace fastseg::bind
