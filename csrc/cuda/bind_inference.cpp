// pybind11 bindings of the CUDA inference kernels (inference.cu) in fastseg._C_cuda, compiled by the
// host compiler. Same contract as module.cpp: raw device pointers (Python ints from
// `tensor.data_ptr()`), shapes, dtype names and the stream as an int; the caller
// (fastseg/ops/_cuda_inference.py) allocates every output with torch and keeps it alive. These
// bindings check the arguments (second line after the Python wrappers), release the GIL and launch.
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "fastseg/inference.h"

#include "binding.h"
#include "kernels.cuh"

namespace py = pybind11;

namespace fastseg::bind {
namespace {

template <typename T>
T* optional_pointer(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// Calls f with a typed null pointer naming a float storage type: 'float32', 'float16', 'bfloat16'.
template <typename F>
void dispatch_float_storage(const std::string& dtype, const char* name, F&& f) {
  if (dtype == "float32") return f(static_cast<const float*>(nullptr));
  if (dtype == "float16") return f(static_cast<const Half*>(nullptr));
  if (dtype == "bfloat16") return f(static_cast<const BFloat16*>(nullptr));
  throw std::invalid_argument(std::string(name) + " dtype must be 'float32', 'float16' or 'bfloat16', got '" + dtype + "'");
}

int64_t product(const std::vector<int64_t>& v) {
  int64_t p = 1;
  for (int64_t x : v) p *= x;
  return p;
}

// acc (C, D, H, W) float32; weights (D, H, W) float32 or 0; tiles (B, C, d, h, w) of tiles_dtype;
// offsets: the (B, 3) start corners on the host, flat, checked here and copied by the launcher into
// offsets_ptr, an int64 (B, 3) device buffer, so that the kernel reads exactly what was checked;
// importance (d, h, w) float32 or 0.
void accumulate_tiles(std::uintptr_t acc_ptr, std::uintptr_t weights_ptr, std::uintptr_t tiles_ptr,
                      const std::string& tiles_dtype, const std::vector<int64_t>& offsets, std::uintptr_t offsets_ptr,
                      std::uintptr_t importance_ptr, const std::vector<int64_t>& image, const std::vector<int64_t>& tile,
                      std::uintptr_t stream) {
  require(image.size() == 4, "image must be (C, D, H, W), got " + list_str(image));
  require(tile.size() == 5, "tile must be (B, C, d, h, w), got " + list_str(tile));
  require(tile[1] == image[0], "tiles have " + std::to_string(tile[1]) + " channels but the accumulator has " +
                                   std::to_string(image[0]));
  for (int64_t x : image) require(x >= 0, "image sizes must not be negative, got " + list_str(image));
  for (int64_t x : tile) require(x >= 0, "tile sizes must not be negative, got " + list_str(tile));
  for (int a = 0; a < 3; ++a)
    require(tile[a + 2] <= image[a + 1], "tile " + list_str(tile) + " is larger than the image " + list_str(image));
  require(static_cast<int64_t>(offsets.size()) == tile[0] * 3,
          "offsets must hold B * 3 = " + std::to_string(tile[0] * 3) + " values, got " + std::to_string(offsets.size()));
  if (const int64_t bad = first_tile_outside(offsets.data(), image.data(), tile.data()); bad >= 0) {
    const int64_t b = bad / 3, a = bad % 3;
    throw std::invalid_argument("tile " + std::to_string(b) + " at offset " + std::to_string(offsets[bad]) +
                                " of axis " + std::to_string(a) + " does not fit: offsets of tile size " +
                                std::to_string(tile[a + 2]) + " must lie in [0, " +
                                std::to_string(image[a + 1] - tile[a + 2]) + "] (image size " +
                                std::to_string(image[a + 1]) + ")");
  }
  float* acc = device_pointer<float>(acc_ptr, product(image), "accumulator");
  float* weights = optional_pointer<float>(weights_ptr);
  int64_t* device_offsets = device_pointer<int64_t>(offsets_ptr, tile[0] * 3, "offsets");
  const float* importance = optional_pointer<const float>(importance_ptr);
  dispatch_float_storage(tiles_dtype, "tiles", [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    const T* tiles = device_pointer<const T>(tiles_ptr, product(tile), "tiles");
    py::gil_scoped_release release;
    cuda::accumulate_tiles<T>(acc, weights, tiles, offsets.data(), device_offsets, importance, image.data(),
                              tile.data(), stream_of(stream));
  });
}

// logits (C, D, H, W) of logits_dtype; weights (D, H, W) float32 or 0; region_labels (C,) int32 or 0
// (argmax); labels (D', H', W') of label_dtype ('uint8' or 'uint16'); probabilities
// (C, D', H', W') float32 or 0.
void export_segmentation(std::uintptr_t logits_ptr, const std::string& logits_dtype, std::uintptr_t weights_ptr,
                         const std::vector<int64_t>& in_shape, const std::vector<int64_t>& out_shape,
                         const std::vector<int>& orders, std::uintptr_t region_labels_ptr, std::uintptr_t labels_ptr,
                         const std::string& label_dtype, std::uintptr_t probabilities_ptr, std::uintptr_t stream) {
  require(in_shape.size() == 4, "in_shape must be (C, D, H, W), got " + list_str(in_shape));
  require(out_shape.size() == 3, "out_shape must be (D', H', W'), got " + list_str(out_shape));
  require(orders.size() == 3, "orders must have 3 entries (z, y, x), got " + list_str(orders));
  for (int64_t x : in_shape) require(x > 0, "in_shape entries must be positive, got " + list_str(in_shape));
  for (int a = 0; a < 3; ++a) {
    require(out_shape[a] > 0, "out_shape entries must be positive, got " + list_str(out_shape));
    require(orders[a] == 0 || orders[a] == 1, "export orders must be 0 or 1, got " + list_str(orders));
  }
  const ExportMode mode = region_labels_ptr != 0 ? ExportMode::kRegions : ExportMode::kArgmax;
  require(label_dtype == "uint8" || label_dtype == "uint16", "label_dtype must be 'uint8' or 'uint16', got '" + label_dtype + "'");
  require(mode == ExportMode::kRegions || in_shape[0] - 1 <= (label_dtype == "uint8" ? 255 : 65535),
          std::to_string(in_shape[0]) + " classes do not fit " + label_dtype + " labels");
  const float* weights = optional_pointer<const float>(weights_ptr);
  const int32_t* regions = optional_pointer<const int32_t>(region_labels_ptr);
  float* probabilities = optional_pointer<float>(probabilities_ptr);
  const int64_t voxels = product(out_shape);
  dispatch_float_storage(logits_dtype, "logits", [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    const T* logits = device_pointer<const T>(logits_ptr, product(in_shape), "logits");
    if (label_dtype == "uint8") {
      uint8_t* labels = device_pointer<uint8_t>(labels_ptr, voxels, "labels");
      py::gil_scoped_release release;
      cuda::export_segmentation<T, uint8_t>(logits, weights, in_shape.data(), out_shape.data(), orders.data(), mode,
                                            regions, labels, probabilities, stream_of(stream));
    } else {
      uint16_t* labels = device_pointer<uint16_t>(labels_ptr, voxels, "labels");
      py::gil_scoped_release release;
      cuda::export_segmentation<T, uint16_t>(logits, weights, in_shape.data(), out_shape.data(), orders.data(), mode,
                                             regions, labels, probabilities, stream_of(stream));
    }
  });
}

}  // namespace

void register_inference(py::module_& m) {
  m.def("accumulate_tiles", &accumulate_tiles, py::arg("acc_ptr"), py::arg("weights_ptr"), py::arg("tiles_ptr"),
        py::arg("tiles_dtype"), py::arg("offsets"), py::arg("offsets_ptr"), py::arg("importance_ptr"),
        py::arg("image"), py::arg("tile"), py::arg("stream"),
        "acc (C, D, H, W) += tiles[b] * importance at offsets[b]; weights (D, H, W) += importance; atomics. "
        "offsets: (B, 3) host values, flat, checked and copied to the int64 device buffer offsets_ptr. "
        "weights_ptr / importance_ptr may be 0.");
  m.def("export_segmentation", &export_segmentation, py::arg("logits_ptr"), py::arg("logits_dtype"),
        py::arg("weights_ptr"), py::arg("in_shape"), py::arg("out_shape"), py::arg("orders"),
        py::arg("region_labels_ptr"), py::arg("labels_ptr"), py::arg("label_dtype"), py::arg("probabilities_ptr"),
        py::arg("stream"),
        "Fused resample (order 0/1 per axis) + argmax (region_labels_ptr 0) or region labels; probabilities_ptr 0 "
        "skips the probabilities.");
}

}  // namespace fastseg::bind
