// pybind11 bindings of the inference kernels in fastseg._C (launchers in inference.cpp, bodies in
// fastseg/inference.h). As everywhere in this module: validate (the Python wrappers in
// fastseg/ops/accumulate.py and export.py validated first; these checks are the second line),
// allocate the outputs, release the GIL, launch. std::invalid_argument surfaces as ValueError.
//
// 16-bit floats cross as numpy float16 (IEEE half) or as uint16 bit patterns (bfloat16, which numpy
// lacks); a string names which.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "binding.h"
#include "kernels.h"

namespace py = pybind11;

namespace fastseg::bind {
namespace {

bool is_float32(const py::array& a) { return a.dtype().kind() == 'f' && a.dtype().itemsize() == 4; }

// A C-contiguous float32 array of `ndim` dimensions; `writable` for in-place outputs.
void require_float32(const py::array& a, const char* name, py::ssize_t ndim, bool writable) {
  require(is_float32(a), std::string(name) + " must be float32, got " + dtype_str(a));
  require(a.ndim() == ndim, std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got shape " +
                                shape_str(a));
  require(a.flags() & py::array::c_style, std::string(name) + " must be C-contiguous");
  require(!writable || a.writeable(), std::string(name) + " must be writable (it is updated in place)");
}

// A 16/32-bit float array whose element type `dtype` names: 'float32', 'float16' (numpy float16) or
// 'bfloat16' (uint16 bit patterns).
void require_float_storage(const py::array& a, const std::string& dtype, const char* name) {
  const auto dt = a.dtype();
  if (dtype == "float32") {
    require(is_float32(a), std::string(name) + " is declared float32 but holds " + dtype_str(a));
  } else if (dtype == "float16") {
    require(dt.kind() == 'f' && dt.itemsize() == 2, std::string(name) + " is declared float16 but holds " + dtype_str(a));
  } else if (dtype == "bfloat16") {
    require((dt.kind() == 'u' || dt.kind() == 'i') && dt.itemsize() == 2,
            std::string(name) + " is declared bfloat16 (uint16 bit patterns) but holds " + dtype_str(a));
  } else {
    throw std::invalid_argument(std::string(name) + " dtype must be 'float32', 'float16' or 'bfloat16', got '" + dtype + "'");
  }
  require(a.flags() & py::array::c_style, std::string(name) + " must be C-contiguous");
}

// Calls f with a typed null pointer naming the element type of a float storage string.
template <typename F>
void dispatch_float_storage(const std::string& dtype, F&& f) {
  if (dtype == "float32") return f(static_cast<const float*>(nullptr));
  if (dtype == "float16") return f(static_cast<const Half*>(nullptr));
  return f(static_cast<const BFloat16*>(nullptr));
}

std::optional<py::array> optional_array(const py::object& o) {
  if (o.is_none()) return std::nullopt;
  return o.cast<py::array>();
}

// acc (C, D, H, W) float32, weights (D, H, W) float32 or None, tiles (B, C, d, h, w), offsets (B, 3)
// int64, importance (d, h, w) float32 or None. Updates acc and weights in place.
void accumulate_tiles(py::array acc, const py::object& weights_obj, const py::array& tiles, const std::string& tiles_dtype,
                      const py::array& offsets, const py::object& importance_obj) {
  require_float32(acc, "accumulator", 4, true);
  require_float_storage(tiles, tiles_dtype, "tiles");
  require(tiles.ndim() == 5, "tiles must be (B, C, d, h, w), got shape " + shape_str(tiles));
  const std::array<int64_t, 4> image{acc.shape(0), acc.shape(1), acc.shape(2), acc.shape(3)};
  const std::array<int64_t, 5> tile{tiles.shape(0), tiles.shape(1), tiles.shape(2), tiles.shape(3), tiles.shape(4)};
  require(tile[1] == image[0], "tiles have " + std::to_string(tile[1]) + " channels but the accumulator has " +
                                   std::to_string(image[0]));
  require(offsets.dtype().kind() == 'i' && offsets.dtype().itemsize() == 8, "offsets must be int64, got " + dtype_str(offsets));
  require(offsets.ndim() == 2 && offsets.shape(0) == tile[0] && offsets.shape(1) == 3,
          "offsets must be (B, 3) = (" + std::to_string(tile[0]) + ", 3), got " + shape_str(offsets));
  require(offsets.flags() & py::array::c_style, "offsets must be C-contiguous");
  for (int a = 0; a < 3; ++a)
    require(tile[a + 2] <= image[a + 1], "tile (" + std::to_string(tile[2]) + ", " + std::to_string(tile[3]) + ", " +
                                             std::to_string(tile[4]) + ") is larger than the image " + shape_str(acc));
  const auto* off = static_cast<const int64_t*>(offsets.data());
  if (const int64_t bad = first_tile_outside(off, image.data(), tile.data()); bad >= 0) {
    const int64_t b = bad / 3, a = bad % 3;
    throw std::invalid_argument("tile " + std::to_string(b) + " at offset " + std::to_string(off[bad]) + " of axis " +
                                std::to_string(a) + " does not fit: offsets of tile size " + std::to_string(tile[a + 2]) +
                                " must lie in [0, " + std::to_string(image[a + 1] - tile[a + 2]) + "] (image size " +
                                std::to_string(image[a + 1]) + ")");
  }
  float* weights = nullptr;
  if (auto w = optional_array(weights_obj)) {
    require_float32(*w, "weights", 3, true);
    for (int a = 0; a < 3; ++a)
      require(w->shape(a) == image[a + 1], "weights must have the accumulator's spatial shape, got " + shape_str(*w));
    weights = static_cast<float*>(w->mutable_data());
  }
  const float* importance = nullptr;
  if (auto g = optional_array(importance_obj)) {
    require_float32(*g, "importance_map", 3, false);
    for (int a = 0; a < 3; ++a)
      require(g->shape(a) == tile[a + 2], "importance_map must have the tile shape, got " + shape_str(*g));
    importance = static_cast<const float*>(g->data());
  }
  float* dst = static_cast<float*>(acc.mutable_data());
  const void* src = tiles.data();
  dispatch_float_storage(tiles_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    py::gil_scoped_release release;
    cpu::accumulate_tiles<T>(dst, weights, static_cast<const T*>(src), off, importance, image.data(), tile.data());
  });
}

// NaN and +-Inf among the elements of x, a C-contiguous array of float storage `dtype`.
int64_t count_nonfinite(const py::array& x, const std::string& dtype) {
  require_float_storage(x, dtype, "x");
  const void* data = x.data();
  const int64_t n = static_cast<int64_t>(x.size());
  int64_t count = 0;
  dispatch_float_storage(dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    py::gil_scoped_release release;
    count = cpu::count_nonfinite<T>(static_cast<const T*>(data), n);
  });
  return count;
}

// acc (C, *spatial) float32 /= weights (*spatial) float32, in place.
void normalize_accumulated(py::array acc, const py::array& weights) {
  require(acc.ndim() >= 1, "accumulator must be (C, *spatial)");
  require_float32(acc, "accumulator", acc.ndim(), true);
  require_float32(weights, "weights", acc.ndim() - 1, false);
  for (py::ssize_t a = 1; a < acc.ndim(); ++a)
    require(weights.shape(a - 1) == acc.shape(a), "weights " + shape_str(weights) +
                                                      " must match the accumulator's spatial shape " + shape_str(acc));
  const int64_t C = acc.shape(0);
  const int64_t voxels = static_cast<int64_t>(weights.size());
  float* a = static_cast<float*>(acc.mutable_data());
  const float* w = static_cast<const float*>(weights.data());
  py::gil_scoped_release release;
  cpu::normalize_accumulated(a, w, C, voxels);
}

template <typename T, typename L>
py::object export_typed(const py::array& logits, const float* weights, const std::array<int64_t, 4>& in_shape,
                        const std::array<int64_t, 3>& out_shape, const std::array<int, 3>& orders, ExportMode mode,
                        const std::vector<int32_t>& regions, bool return_probabilities) {
  py::array_t<L> labels({out_shape[0], out_shape[1], out_shape[2]});
  py::array_t<float> probabilities;
  float* probs = nullptr;
  if (return_probabilities) {
    probabilities = py::array_t<float>({in_shape[0], out_shape[0], out_shape[1], out_shape[2]});
    probs = probabilities.mutable_data();
  }
  const T* src = static_cast<const T*>(logits.data());
  L* dst = labels.mutable_data();
  {
    py::gil_scoped_release release;
    cpu::export_segmentation<T, L>(src, weights, in_shape.data(), out_shape.data(), orders.data(), mode,
                                   regions.empty() ? nullptr : regions.data(), dst, probs);
  }
  if (return_probabilities) return py::make_tuple(labels, probabilities);
  return std::move(labels);
}

// logits (C, D, H, W) -> labels (D', H', W') of label_dtype ('uint8' or 'uint16'), plus float32
// probabilities (C, D', H', W') when asked. region_labels: None (argmax) or C labels (regions).
py::object export_segmentation(const py::array& logits, const std::string& logits_dtype, const py::object& weights_obj,
                               const std::vector<int64_t>& out_shape, const std::vector<int>& orders,
                               const py::object& region_labels, const std::string& label_dtype,
                               bool return_probabilities) {
  require_float_storage(logits, logits_dtype, "logits");
  require(logits.ndim() == 4, "logits must be (C, D, H, W), got shape " + shape_str(logits));
  const std::array<int64_t, 4> in_shape{logits.shape(0), logits.shape(1), logits.shape(2), logits.shape(3)};
  for (int a = 0; a < 4; ++a) require(in_shape[a] > 0, "logits must not be empty, got shape " + shape_str(logits));
  require(out_shape.size() == 3, "out_shape must have 3 entries (D', H', W')");
  require(orders.size() == 3, "orders must have 3 entries (z, y, x)");
  std::array<int64_t, 3> out{};
  std::array<int, 3> o{};
  for (int a = 0; a < 3; ++a) {
    require(out_shape[a] > 0, "out_shape entries must be positive, got " + std::to_string(out_shape[a]));
    require(orders[a] == 0 || orders[a] == 1, "export orders must be 0 or 1, got " + std::to_string(orders[a]));
    out[a] = out_shape[a];
    o[a] = orders[a];
  }
  const float* weights = nullptr;
  if (auto w = optional_array(weights_obj)) {
    require_float32(*w, "weights", 3, false);
    for (int a = 0; a < 3; ++a)
      require(w->shape(a) == in_shape[a + 1], "weights " + shape_str(*w) + " must match the logits' spatial shape " +
                                                  shape_str(logits));
    weights = static_cast<const float*>(w->data());
  }
  std::vector<int32_t> regions;
  ExportMode mode = ExportMode::kArgmax;
  if (!region_labels.is_none()) {
    regions = region_labels.cast<std::vector<int32_t>>();
    require(static_cast<int64_t>(regions.size()) == in_shape[0],
            "region_labels must hold one label per channel (" + std::to_string(in_shape[0]) + "), got " +
                std::to_string(regions.size()));
    mode = ExportMode::kRegions;
  }
  const int64_t max_label = mode == ExportMode::kArgmax ? in_shape[0] - 1 : 65535;
  require(label_dtype == "uint8" || label_dtype == "uint16", "label_dtype must be 'uint8' or 'uint16', got '" + label_dtype + "'");
  for (int32_t r : regions)
    require(r >= 0 && r <= (label_dtype == "uint8" ? 255 : 65535),
            "region label " + std::to_string(r) + " does not fit " + label_dtype);
  require(label_dtype == "uint16" || max_label <= 255 || mode == ExportMode::kRegions,
          std::to_string(in_shape[0]) + " classes do not fit uint8 labels");
  require(max_label <= 65535, std::to_string(in_shape[0]) + " classes do not fit uint16 labels");
  py::object result;
  dispatch_float_storage(logits_dtype, [&](auto tag) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(tag)>>;
    if (label_dtype == "uint8")
      result = export_typed<T, uint8_t>(logits, weights, in_shape, out, o, mode, regions, return_probabilities);
    else
      result = export_typed<T, uint16_t>(logits, weights, in_shape, out, o, mode, regions, return_probabilities);
  });
  return result;
}

}  // namespace

void register_inference(py::module_& m) {
  m.def("accumulate_tiles", &accumulate_tiles, py::arg("accumulator"), py::arg("weights"), py::arg("tiles"),
        py::arg("tiles_dtype"), py::arg("offsets"), py::arg("importance_map"),
        "accumulator (C, D, H, W) += tiles[b] * importance_map at offsets[b]; weights (D, H, W) += importance_map. "
        "In place; tiles (B, C, d, h, w) float32/float16/bfloat16 (uint16 bits), offsets (B, 3) int64.");
  m.def("count_nonfinite", &count_nonfinite, py::arg("x"), py::arg("dtype"),
        "Number of NaN and +-Inf elements of x, C-contiguous float32, float16 or bfloat16 (uint16 bits) as dtype "
        "names it.");
  m.def("normalize_accumulated", &normalize_accumulated, py::arg("accumulator"), py::arg("weights"),
        "accumulator (C, *spatial) /= weights (*spatial), in place, float32.");
  m.def("export_segmentation", &export_segmentation, py::arg("logits"), py::arg("logits_dtype"), py::arg("weights"),
        py::arg("out_shape"), py::arg("orders"), py::arg("region_labels"), py::arg("label_dtype"),
        py::arg("return_probabilities"),
        "Fused resample (per-axis order 0/1) + argmax or region labels of logits (C, D, H, W) to out_shape; "
        "returns labels, or (labels, probabilities) when return_probabilities.");
}

}  // namespace fastseg::bind
