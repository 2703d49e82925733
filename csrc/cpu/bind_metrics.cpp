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
#include <string>
#include <vector>

#include "binding.h"

namespace py = pybind11;

namespace fastseg::bind {
namespace {

// Returns the number of voxels with a label outside [0, size); fills counts (size * size).
template <typename T>
int64_t confusion_kernel(const T* ref, const T* pred, int64_t n, int64_t size, int64_t* counts) {
  const int64_t bins = size * size;
  int64_t outside = 0;
#pragma omp parallel reduction(+ : outside)
  {
    std::vector<int64_t> local(static_cast<size_t>(bins), 0);
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < n; ++i) {
      const int64_t r = static_cast<int64_t>(ref[i]);
      const int64_t p = static_cast<int64_t>(pred[i]);
      if (r < 0 || r >= size || p < 0 || p >= size) {
        ++outside;
        continue;
      }
      ++local[static_cast<size_t>(r * size + p)];
    }
#pragma omp critical
    for (int64_t b = 0; b < bins; ++b) counts[b] += local[static_cast<size_t>(b)];
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

}  // namespace

void register_metrics(py::module_& m) {
  m.def("confusion_matrix", &confusion_matrix, py::arg("reference"), py::arg("prediction"), py::arg("size"),
        "counts[r, p] of voxels with reference label r and predicted label p, and the count of voxels with a "
        "label outside [0, size).");
}

}  // namespace fastseg::bind
