// The confusion matrix of two label maps, bound in fastseg._C (fastseg.evaluate.metrics).
//
// counts[r * size + p] = the number of voxels whose reference label is r and predicted label p.
// One pass over both maps: each thread counts its share of the voxels into its own histogram
// (size * size int64 entries, a few hundred bytes for a handful of labels), and the histograms are
// added at the end. A label outside [0, size) is not counted but reported (the caller raises).
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "binding.h"

namespace py = pybind11;

namespace fastseg::bind {
namespace {

// Adds `run` voxels of the pair (r, p) to the histogram, or to `outside` when a label is not in [0, size).
inline void add_pair(int64_t r, int64_t p, int64_t run, int64_t size, int64_t* hist, int64_t& outside) {
  const uint64_t limit = static_cast<uint64_t>(size);
  if (static_cast<uint64_t>(r) < limit && static_cast<uint64_t>(p) < limit)
    hist[r * size + p] += run;
  else
    outside += run;
}

// Returns the number of voxels with a label outside [0, size); fills counts (size * size).
//
// Label maps are mostly long runs of one (reference, prediction) pair -- background above all --
// and a per-voxel histogram increment is slow: each voxel waits for the previous increment of the
// same bin (store-to-load forwarding, ~5 cycles). So the voxels are taken in blocks of 64:
//
//   1. a vectorized pass writes one byte per voxel: 1 where the voxel's pair differs from the
//      block's first pair, 0 where it is the same;
//   2. the block's first pair gets 64 minus the number of differing voxels in one addition;
//   3. only the differing voxels are counted one by one, found eight bytes at a time (a zero
//      8-byte word has none; in a nonzero word the lowest set byte is found with a count of
//      trailing zeros).
//
// A pair with a label outside [0, size) goes to an extra bin (`bins`), reported as `outside`.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the block scan reads bytes of a word in little-endian order");

template <typename T>
int64_t confusion_kernel(const T* ref, const T* pred, int64_t n, int64_t size, int64_t* counts) {
  constexpr int64_t kBlock = 64;
  const int64_t bins = size * size;
  const uint64_t limit = static_cast<uint64_t>(size);
  const int64_t blocks = n / kBlock;
  int64_t outside = 0;
  auto key = [bins, limit, size](T r, T p) -> int64_t {
    const int64_t ri = static_cast<int64_t>(r), pi = static_cast<int64_t>(p);
    return static_cast<uint64_t>(ri) < limit && static_cast<uint64_t>(pi) < limit ? ri * size + pi : bins;
  };
#pragma omp parallel reduction(+ : outside)
  {
    std::vector<int64_t> local(static_cast<size_t>(bins + 1), 0);
    int64_t* hist = local.data();
#pragma omp for schedule(static) nowait
    for (int64_t b = 0; b < blocks; ++b) {
      const T* rb = ref + b * kBlock;
      const T* pb = pred + b * kBlock;
      const T r0 = rb[0], p0 = pb[0];
      uint8_t differs[kBlock];
      for (int64_t j = 0; j < kBlock; ++j) differs[j] = static_cast<uint8_t>((rb[j] != r0) | (pb[j] != p0));
      int64_t count = 0;
      for (int64_t w = 0; w < kBlock; w += 8) {
        uint64_t word;
        std::memcpy(&word, differs + w, 8);
        while (word != 0) {
          const int byte = __builtin_ctzll(word) >> 3;  // little-endian: the lowest byte is the first voxel
          word &= ~(uint64_t{0xFF} << (8 * byte));
          ++hist[key(rb[w + byte], pb[w + byte])];
          ++count;
        }
      }
      hist[key(r0, p0)] += kBlock - count;
    }
#pragma omp single nowait
    for (int64_t i = blocks * kBlock; i < n; ++i) ++hist[key(ref[i], pred[i])];
    outside += hist[bins];
#pragma omp critical
    for (int64_t k = 0; k < bins; ++k) counts[k] += hist[k];
  }
  return outside;
}

template <typename T>
bool try_confusion(const py::array& ref, const py::array& pred, int64_t size, py::array_t<int64_t>& out, int64_t& outside) {
  if (!is_type<T>(ref.dtype())) return false;
  const T* r = static_cast<const T*>(ref.data());
  const T* p = static_cast<const T*>(pred.data());
  const int64_t n = ref.size();
  int64_t* c = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (int64_t b = 0; b < size * size; ++b) c[b] = 0;
    outside = confusion_kernel(r, p, n, size, c);
  }
  return true;
}

// (counts int64 (size, size), voxels with a label outside [0, size)).
py::tuple confusion_matrix(const py::array& ref, const py::array& pred, int64_t size) {
  require(size >= 1 && size <= 65536, "size must be in [1, 65536], got " + std::to_string(size));
  require(ref.ndim() == pred.ndim(), "reference and prediction must have the same shape, got " + shape_str(ref) + " and " +
                                         shape_str(pred));
  for (py::ssize_t i = 0; i < ref.ndim(); ++i)
    require(ref.shape(i) == pred.shape(i),
            "reference and prediction must have the same shape, got " + shape_str(ref) + " and " + shape_str(pred));
  require(ref.dtype().is(pred.dtype()) || (ref.dtype().kind() == pred.dtype().kind() && ref.dtype().itemsize() == pred.dtype().itemsize()),
          "reference and prediction must have the same dtype, got " + dtype_str(ref) + " and " + dtype_str(pred));
  require_c_contiguous(ref, "reference");
  require_c_contiguous(pred, "prediction");
  py::array_t<int64_t> out({size, size});
  int64_t outside = 0;
  const bool done = try_confusion<uint8_t>(ref, pred, size, out, outside) ||
                    try_confusion<int8_t>(ref, pred, size, out, outside) ||
                    try_confusion<uint16_t>(ref, pred, size, out, outside) ||
                    try_confusion<int16_t>(ref, pred, size, out, outside) ||
                    try_confusion<int32_t>(ref, pred, size, out, outside) ||
                    try_confusion<uint32_t>(ref, pred, size, out, outside) ||
                    try_confusion<int64_t>(ref, pred, size, out, outside);
  require(done, "label maps must be 8-, 16-, 32- or 64-bit integers, got " + dtype_str(ref));
  return py::make_tuple(out, outside);
}

// Bounding boxes of every label in [0, size) of a 3D label map (z, y, x), one pass.
//
// boxes[l] = (z0, y0, x0, z1, y1, x1), stops exclusive; a label that does not occur has z0 = Z
// (start past stop). Each thread takes whole z-slices and keeps its own boxes; along a row the
// voxels come in runs of one label, and a run updates its label's box once. Labels outside
// [0, size) are ignored (the confusion matrix reports them).
template <typename T>
void label_boxes_kernel(const T* seg, int64_t Z, int64_t Y, int64_t X, int64_t size, int64_t* boxes) {
  const uint64_t limit = static_cast<uint64_t>(size);
  for (int64_t l = 0; l < size; ++l) {
    int64_t* b = boxes + 6 * l;
    b[0] = Z, b[1] = Y, b[2] = X, b[3] = 0, b[4] = 0, b[5] = 0;
  }
#pragma omp parallel
  {
    std::vector<int64_t> local(static_cast<size_t>(6 * size));
    for (int64_t l = 0; l < size; ++l) {
      int64_t* b = local.data() + 6 * l;
      b[0] = Z, b[1] = Y, b[2] = X, b[3] = 0, b[4] = 0, b[5] = 0;
    }
#pragma omp for schedule(static) nowait
    for (int64_t z = 0; z < Z; ++z) {
      for (int64_t y = 0; y < Y; ++y) {
        const T* row = seg + (z * Y + y) * X;
        int64_t x = 0;
        while (x < X) {
          const T value = row[x];
          int64_t end = x + 1;
          while (end < X && row[end] == value) ++end;
          const int64_t l = static_cast<int64_t>(value);
          if (static_cast<uint64_t>(l) < limit) {
            int64_t* b = local.data() + 6 * l;
            b[0] = std::min(b[0], z), b[1] = std::min(b[1], y), b[2] = std::min(b[2], x);
            b[3] = std::max(b[3], z + 1), b[4] = std::max(b[4], y + 1), b[5] = std::max(b[5], end);
          }
          x = end;
        }
      }
    }
#pragma omp critical
    for (int64_t l = 0; l < size; ++l) {
      int64_t* b = boxes + 6 * l;
      const int64_t* m = local.data() + 6 * l;
      for (int k = 0; k < 3; ++k) b[k] = std::min(b[k], m[k]), b[k + 3] = std::max(b[k + 3], m[k + 3]);
    }
  }
}

template <typename T>
bool try_boxes(const py::array& seg, int64_t size, py::array_t<int64_t>& out) {
  if (!is_type<T>(seg.dtype())) return false;
  const T* data = static_cast<const T*>(seg.data());
  const int64_t Z = seg.shape(0), Y = seg.shape(1), X = seg.shape(2);
  int64_t* boxes = out.mutable_data();
  py::gil_scoped_release release;
  label_boxes_kernel(data, Z, Y, X, size, boxes);
  return true;
}

// int64 (size, 6): (z0, y0, x0, z1, y1, x1) of each label; z0 = Z for an absent label.
py::array_t<int64_t> label_boxes(const py::array& seg, int64_t size) {
  require(size >= 1 && size <= 65536, "size must be in [1, 65536], got " + std::to_string(size));
  require(seg.ndim() == 3, "label map must be 3D (z, y, x), got shape " + shape_str(seg));
  require_c_contiguous(seg, "label map");
  py::array_t<int64_t> out({size, int64_t{6}});
  const bool done = try_boxes<uint8_t>(seg, size, out) || try_boxes<int8_t>(seg, size, out) ||
                    try_boxes<uint16_t>(seg, size, out) || try_boxes<int16_t>(seg, size, out) ||
                    try_boxes<int32_t>(seg, size, out) || try_boxes<uint32_t>(seg, size, out) ||
                    try_boxes<int64_t>(seg, size, out);
  require(done, "label maps must be 8-, 16-, 32- or 64-bit integers, got " + dtype_str(seg));
  return out;
}

}  // namespace

void register_metrics(py::module_& m) {
  m.def("confusion_matrix", &confusion_matrix, py::arg("reference"), py::arg("prediction"), py::arg("size"),
        "counts[r, p] of voxels with reference label r and predicted label p, and the count of voxels with a "
        "label outside [0, size).");
  m.def("label_boxes", &label_boxes, py::arg("seg"), py::arg("size"),
        "(size, 6) int64 bounding boxes (z0, y0, x0, z1, y1, x1) of the labels 0..size-1 of a 3D label map; "
        "z0 = Z for a label that does not occur.");
}

}  // namespace fastseg::bind
