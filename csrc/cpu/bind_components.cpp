// pybind11 bindings of connected-component labelling (csrc/cpu/components*.cpp) in fastseg._C.
//
// Arrays arrive as (D, H, W) C-contiguous numpy arrays (fastseg/ops/components.py reshapes 2D
// images to D = 1 and copies other layouts). Integer inputs are dispatched by element size only:
// labelling compares values for equality and with zero, which reads the same on the signed and the
// unsigned type of one size, so int16 runs through the uint16 kernels, and so on. Each binding
// validates (a second line behind the Python wrapper), allocates, releases the GIL and launches;
// std::invalid_argument surfaces as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "binding.h"
#include "kernels.h"
#include "scratch.h"

namespace py = pybind11;

namespace fastseg::bind {
namespace {

bool is_integral(const py::array& a) {
  const char k = a.dtype().kind();
  return k == 'b' || k == 'i' || k == 'u';
}

// Shape of a (D, H, W) C-contiguous integer or bool array whose voxels fit the uint32 labels.
std::array<int64_t, 3> volume_shape(const py::array& a, const char* name) {
  require(a.ndim() == 3, std::string(name) + " must be (D, H, W), got shape " + shape_str(a));
  require(a.flags() & py::array::c_style, std::string(name) + " must be C-contiguous (the Python wrapper copies it)");
  require(is_integral(a), std::string(name) + " must hold integers or bools, got dtype " + dtype_str(a));
  require(a.size() < static_cast<py::ssize_t>(kNoLabel),
          std::string(name) + " has " + std::to_string(a.size()) + " voxels; at most 2^32 - 2 are supported");
  require(a.shape(2) < std::numeric_limits<int32_t>::max(),
          std::string(name) + " rows must be shorter than 2^31 voxels, got " + std::to_string(a.shape(2)));
  return {a.shape(0), a.shape(1), a.shape(2)};
}

// Calls f with a typed null pointer of the unsigned type as wide as a's elements.
template <typename F>
auto dispatch_width(const py::array& a, F&& f) {
  switch (a.dtype().itemsize()) {
    case 1: return f(static_cast<const uint8_t*>(nullptr));
    case 2: return f(static_cast<const uint16_t*>(nullptr));
    case 4: return f(static_cast<const uint32_t*>(nullptr));
    case 8: return f(static_cast<const uint64_t*>(nullptr));
    default: throw std::invalid_argument("unsupported element size " + std::to_string(a.dtype().itemsize()));
  }
}

template <typename P>
using element_t = std::remove_const_t<std::remove_pointer_t<P>>;

// A (D, H, W) array whose memory comes from the scratch cache (scratch.h) and goes back to it when
// numpy frees the array: a labelling loop over volumes of similar size then reuses pages that are
// already mapped instead of faulting in (and zeroing) fresh ones for every output.
template <typename T>
py::array_t<T> scratch_array(const std::array<int64_t, 3>& shape) {
  struct Owned {
    void* base;
    size_t capacity;
  };
  const size_t n = static_cast<size_t>(shape[0] * shape[1] * shape[2]);
  auto* owned = new Owned{nullptr, 0};
  try {
    owned->base = cpu::scratch_acquire(std::max<size_t>(n, 1) * sizeof(T), &owned->capacity);
  } catch (...) {
    delete owned;
    throw;
  }
  py::capsule release(owned, [](void* p) {
    auto* o = static_cast<Owned*>(p);
    cpu::scratch_release(o->base, o->capacity);
    delete o;
  });
  return py::array_t<T>({shape[0], shape[1], shape[2]}, static_cast<T*>(owned->base), release);
}

// A numpy array over a Scratch's memory (no copy), which returns to the cache when numpy frees it.
template <typename T>
py::array_t<T> scratch_to_numpy(cpu::Scratch<T>&& data, std::vector<py::ssize_t> shape) {
  if (data.get() == nullptr) return py::array_t<T>(shape);  // no elements
  auto* owned = new cpu::Scratch<T>(std::move(data));
  py::capsule release(owned, [](void* p) { delete static_cast<cpu::Scratch<T>*>(p); });
  return py::array_t<T>(shape, owned->get(), release);
}

void check_connectivity(int connectivity) {
  int hops;
  bool volumetric;
  require(connectivity_rule(connectivity, &hops, &volumetric),
          "connectivity must be 26, 18 or 6 (3D) or 8 or 4 (in-plane), got " + std::to_string(connectivity));
}

py::tuple connected_components(const py::array& x, int connectivity, bool binary, bool stats) {
  const auto shape = volume_shape(x, "x");
  check_connectivity(connectivity);
  py::array_t<cc_index_t> labels = scratch_array<cc_index_t>(shape);
  cc_index_t* out = labels.mutable_data();
  const void* in = x.data();
  return dispatch_width(x, [&](auto tag) {
    using T = element_t<decltype(tag)>;
    cpu::ComponentTable<T> table;
    int64_t n;
    {
      py::gil_scoped_release release;
      n = cpu::connected_components<T>(static_cast<const T*>(in), out, shape.data(), connectivity, binary,
                                       stats ? &table : nullptr);
    }
    if (!stats) return py::tuple(py::make_tuple(labels, n));
    py::array count = scratch_to_numpy(std::move(table.count), {n});
    py::array bbox = scratch_to_numpy(std::move(table.bbox), {n, int64_t{6}});
    py::array value = scratch_to_numpy(std::move(table.value), {n}).attr("view")(x.dtype());
    return py::tuple(py::make_tuple(labels, n, count, bbox, value));
  });
}

py::tuple component_stats(const py::array& labels, int64_t n, const py::object& image) {
  const auto shape = volume_shape(labels, "labels");
  require(n >= 0, "n must be >= 0, got " + std::to_string(n));
  py::array img = image.is_none() ? py::array_t<uint8_t>(0) : image.cast<py::array>();
  if (!image.is_none()) {
    const auto ishape = volume_shape(img, "image");
    require(ishape == shape, "image must have the shape of labels " + shape_str(labels) + ", got " + shape_str(img));
  }
  py::array_t<int64_t> count(n), bbox({n, int64_t{6}});
  py::array value(img.dtype(), std::vector<py::ssize_t>{static_cast<py::ssize_t>(n)});
  const void* lab = labels.data();
  const void* im = image.is_none() ? nullptr : img.data();
  int64_t* c = count.mutable_data();
  int64_t* b = bbox.mutable_data();
  void* v = value.mutable_data();
  const uint64_t beyond = dispatch_width(labels, [&](auto ltag) {
    using L = element_t<decltype(ltag)>;
    return dispatch_width(img, [&](auto vtag) {
      using V = element_t<decltype(vtag)>;
      py::gil_scoped_release release;
      return cpu::component_stats<L, V>(static_cast<const L*>(lab), static_cast<const V*>(im), shape.data(), n, c, b,
                                        static_cast<V*>(v));
    });
  });
  require(beyond == 0, "labels holds label " + std::to_string(beyond) + " but n is " + std::to_string(n) +
                           "; pass the n that connected_components returned");
  return py::make_tuple(count, bbox, value);
}

py::array remove_all_but_largest(const py::array& seg, const py::array& members, const py::array& background,
                                 int connectivity) {
  const auto shape = volume_shape(seg, "seg");
  check_connectivity(connectivity);
  require(members.ndim() == 1 && (members.flags() & py::array::c_style), "members must be a contiguous 1D array");
  require(members.dtype().is(seg.dtype()) && background.dtype().is(seg.dtype()) && background.size() == 1,
          "members and background must be of seg's dtype " + dtype_str(seg) + ", got " + dtype_str(members) +
              " and " + dtype_str(background));
  py::array out(seg.dtype(), std::vector<py::ssize_t>{shape[0], shape[1], shape[2]});
  const void* in = seg.data();
  const void* mem = members.data();
  const void* bg = background.data();
  void* o = out.mutable_data();
  const int64_t n_members = members.size();
  dispatch_width(seg, [&](auto tag) {
    using T = element_t<decltype(tag)>;
    const T fill = *static_cast<const T*>(bg);
    py::gil_scoped_release release;
    cpu::remove_all_but_largest<T>(static_cast<const T*>(in), static_cast<T*>(o), shape.data(),
                                   static_cast<const T*>(mem), n_members, fill, connectivity);
  });
  return out;
}

py::array fill_holes(const py::array& mask, int connectivity) {
  const auto shape = volume_shape(mask, "mask");
  check_connectivity(connectivity);
  py::array_t<bool> out({shape[0], shape[1], shape[2]});
  const void* in = mask.data();
  uint8_t* o = reinterpret_cast<uint8_t*>(out.mutable_data());
  dispatch_width(mask, [&](auto tag) {
    using T = element_t<decltype(tag)>;
    py::gil_scoped_release release;
    cpu::fill_holes<T>(static_cast<const T*>(in), o, shape.data(), connectivity);
  });
  return out;
}

}  // namespace

void register_components(py::module_& m) {
  m.def("connected_components", &connected_components, py::arg("x"), py::arg("connectivity"), py::arg("binary"),
        py::arg("stats") = false,
        "Labels (D, H, W) integer/bool x: returns (uint32 labels, n), components 1..n in raster order; with "
        "stats also (count [n], bbox [n, 6], value [n] of x's dtype), gathered while labelling.");
  m.def("component_stats", &component_stats, py::arg("labels"), py::arg("n"), py::arg("image") = py::none(),
        "Per label 1..n: (count [n], bbox [n, 6] as z0, y0, x0, z1, y1, x1, value [n] of image's dtype).");
  m.def("remove_all_but_largest", &remove_all_but_largest, py::arg("seg"), py::arg("members"),
        py::arg("background"), py::arg("connectivity"),
        "seg with members outside the largest component(s) of their union set to background.");
  m.def("fill_holes", &fill_holes, py::arg("mask"), py::arg("connectivity"),
        "Bool mask with background components that do not reach the border filled.");
}

}  // namespace fastseg::bind
