// pybind11 bindings of connected-component labelling on CUDA (csrc/cuda/components.cu) in
// fastseg._C_cuda. As in module.cpp: raw device pointers and the stream cross as Python ints, the
// caller (fastseg/ops/_cuda_components.py) allocates every buffer with torch and keeps it alive.
// Integer inputs are dispatched by element size (equality and zero read the same signed or not).
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "fastseg/components.h"

#include "binding.h"
#include "kernels.cuh"

namespace py = pybind11;

namespace fastseg::bind {
namespace {

int64_t volume_size(const std::vector<int64_t>& shape) {
  require(shape.size() == 3, "shape must be (D, H, W), got " + std::to_string(shape.size()) + " entries");
  for (int64_t s : shape) require(s >= 0, "shape entries must be >= 0, got " + std::to_string(s));
  const int64_t total = shape[0] * shape[1] * shape[2];
  require(total < static_cast<int64_t>(kNoLabel), "at most 2^32 - 2 voxels are supported, got " + std::to_string(total));
  return total;
}

// in [shape] integers of `itemsize` bytes -> labels [shape] (uint32 bits): roots, kNoLabel background.
void label_components(std::uintptr_t in_ptr, std::uintptr_t labels_ptr, const std::vector<int64_t>& shape,
                      int itemsize, int connectivity, bool binary, std::uintptr_t stream) {
  const int64_t total = volume_size(shape);
  int hops;
  bool volumetric;
  require(connectivity_rule(connectivity, &hops, &volumetric),
          "connectivity must be 26, 18 or 6 (3D) or 8 or 4 (in-plane), got " + std::to_string(connectivity));
  cc_index_t* labels = device_pointer<cc_index_t>(labels_ptr, total, "labels");
  const int64_t s[3] = {shape[0], shape[1], shape[2]};
  auto launch = [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    const T* in = device_pointer<const T>(in_ptr, total, "in");
    py::gil_scoped_release release;
    cuda::label_components<T>(in, labels, s, connectivity, binary, stream_of(stream));
  };
  switch (itemsize) {
    case 1: return launch(static_cast<const uint8_t*>(nullptr));
    case 2: return launch(static_cast<const uint16_t*>(nullptr));
    case 4: return launch(static_cast<const uint32_t*>(nullptr));
    case 8: return launch(static_cast<const uint64_t*>(nullptr));
    default: throw std::invalid_argument("itemsize must be 1, 2, 4 or 8, got " + std::to_string(itemsize));
  }
}

void mark_roots(std::uintptr_t labels_ptr, std::uintptr_t flags_ptr, int64_t total, std::uintptr_t stream) {
  require(total >= 0 && total < static_cast<int64_t>(kNoLabel), "total out of range: " + std::to_string(total));
  const cc_index_t* labels = device_pointer<const cc_index_t>(labels_ptr, total, "labels");
  int32_t* flags = device_pointer<int32_t>(flags_ptr, total, "flags");
  py::gil_scoped_release release;
  cuda::mark_roots(labels, flags, total, stream_of(stream));
}

void relabel(std::uintptr_t labels_ptr, std::uintptr_t rank_ptr, int64_t total, std::uintptr_t stream) {
  require(total >= 0 && total < static_cast<int64_t>(kNoLabel), "total out of range: " + std::to_string(total));
  cc_index_t* labels = device_pointer<cc_index_t>(labels_ptr, total, "labels");
  const int32_t* rank = device_pointer<const int32_t>(rank_ptr, total, "rank");
  py::gil_scoped_release release;
  cuda::relabel(labels, rank, total, stream_of(stream));
}

}  // namespace

void register_components(py::module_& m) {
  m.attr("CC_NO_LABEL") = kNoLabel;
  m.def("cc_label", &label_components, py::arg("in_ptr"), py::arg("labels_ptr"), py::arg("shape"),
        py::arg("itemsize"), py::arg("connectivity"), py::arg("binary"), py::arg("stream"),
        "Union-find labelling of (D, H, W) integers: labels (uint32) = root voxel index, CC_NO_LABEL for 0.");
  m.def("cc_mark_roots", &mark_roots, py::arg("labels_ptr"), py::arg("flags_ptr"), py::arg("total"),
        py::arg("stream"), "flags (int32) = 1 where labels[v] == v, else 0.");
  m.def("cc_relabel", &relabel, py::arg("labels_ptr"), py::arg("rank_ptr"), py::arg("total"), py::arg("stream"),
        "labels = rank[labels] (0 for background), in place.");
}

}  // namespace fastseg::bind
