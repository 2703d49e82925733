// Nearest-border distances of two masks, bound in fastseg._C (fastseg.evaluate.surface).
//
// For masks R (reference) and P (prediction) on one grid of spacing (sz, sy, sx) mm:
//
//   border(M) = voxels of M with a face neighbour outside M, or on the grid's edge along an axis
//               longer than one voxel (axes of one voxel do not count: a 2D image stored as
//               (1, y, x) is 2D)
//   a[i]      = distance in mm from the i-th voxel of border(P) (z, y, x order) to the nearest
//               voxel of border(R);   b[j] likewise from border(R) to border(P)
//
// Both borders are found in one pass each. The distances are exact; each query voxel q searches
// the target border's mask around itself in growing boxes:
//
//   radius rho = s_min, 2 s_min, 4 s_min, ...          (s_min: the smallest spacing)
//   box        = q +- r_i voxels on axis i, r_i = floor(rho / s_i), clipped to the grid
//
//   a target voxel outside the box is more than r_i voxels away on some axis i, so farther than
//   bound = min_i (r_i + 1) s_i  (>= rho). The nearest target voxel found inside the box is the
//   nearest of all when its distance is <= bound, or when the box covers the whole grid.
//
// Most border voxels of a reasonable prediction lie on or next to the other border: they cost
// the query voxel itself (distance 0) or a box of 3 x 3 x 3 voxels or fewer. A voxel far from the
// other border (a false-positive blob, a hole deep inside an organ) would need boxes of millions of
// voxels, so once a box would cost more than kBoxLookups lookups the search goes on in buckets:
// the target border voxels sorted into cells of about 8 s_min mm a side, visited in rings of
// cells around the query's cell,
//
//   ring k      = the cells whose index differs from the query's by exactly k on some axis
//   after ring k, an unvisited target voxel lies in a cell k + 1 or more away on some axis i,
//   so more than k c_i voxels away on it: farther than bound_k = min_i (k c_i + 1) s_i,
//
// until the nearest found is <= bound_k or every cell was visited. Both searches are exact. The
// queries are independent: OpenMP splits them over the threads.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "binding.h"

namespace py = pybind11;

namespace fastseg::bind {
namespace {

struct Grid {
  int64_t n[3];      // z, y, x sizes
  double s[3];       // spacing, mm
  bool active[3];    // axes longer than one voxel
};

// border[v] = 1 for the border voxels of mask (a byte per voxel); their flat indices, in order.
std::vector<int64_t> find_border(const uint8_t* mask, const Grid& g, std::vector<uint8_t>& border) {
  const int64_t Z = g.n[0], Y = g.n[1], X = g.n[2];
  const int64_t step[3] = {Y * X, X, 1};
  border.assign(static_cast<size_t>(Z * Y * X), 0);
#pragma omp parallel for schedule(static)
  for (int64_t z = 0; z < Z; ++z) {
    for (int64_t y = 0; y < Y; ++y) {
      const int64_t row = (z * Y + y) * X;
      for (int64_t x = 0; x < X; ++x) {
        const int64_t v = row + x;
        if (!mask[v]) continue;
        const int64_t idx[3] = {z, y, x};
        bool edge = false;
        for (int a = 0; a < 3 && !edge; ++a) {
          if (!g.active[a]) continue;
          edge = idx[a] == 0 || idx[a] == g.n[a] - 1 || !mask[v - step[a]] || !mask[v + step[a]];
        }
        border[static_cast<size_t>(v)] = edge;
      }
    }
  }
  std::vector<int64_t> points;
  for (int64_t v = 0; v < Z * Y * X; ++v)
    if (border[static_cast<size_t>(v)]) points.push_back(v);
  return points;
}

constexpr double kBoxLookups = 1024;  // box searches beyond this many voxels go to the buckets

// The target border voxels sorted into cells of c[a] voxels along each axis a (m[a] cells), their
// coordinates in mm one array per axis; cell (i, j, k)'s voxels are [start[cell], start[cell + 1]).
struct Buckets {
  int64_t c[3], m[3];
  std::vector<int64_t> start;
  std::vector<double> mm[3];
};

Buckets make_buckets(const std::vector<int64_t>& points, const Grid& g, double s_min) {
  Buckets b;
  for (int a = 0; a < 3; ++a) {
    b.c[a] = g.active[a] ? std::max<int64_t>(1, std::llround(8 * s_min / g.s[a])) : 1;
    b.m[a] = (g.n[a] + b.c[a] - 1) / b.c[a];
  }
  const int64_t Y = g.n[1], X = g.n[2];
  auto cell_of = [&](int64_t v) {
    return ((v / (Y * X)) / b.c[0] * b.m[1] + ((v / X) % Y) / b.c[1]) * b.m[2] + (v % X) / b.c[2];
  };
  b.start.assign(static_cast<size_t>(b.m[0] * b.m[1] * b.m[2] + 1), 0);
  for (int64_t v : points) ++b.start[static_cast<size_t>(cell_of(v) + 1)];
  for (size_t i = 1; i < b.start.size(); ++i) b.start[i] += b.start[i - 1];
  std::vector<int64_t> fill(b.start.begin(), b.start.end() - 1);
  for (auto& c : b.mm) c.resize(points.size());
  for (int64_t v : points) {
    const auto i = static_cast<size_t>(fill[static_cast<size_t>(cell_of(v))]++);
    b.mm[0][i] = static_cast<double>(v / (Y * X)) * g.s[0];
    b.mm[1][i] = static_cast<double>((v / X) % Y) * g.s[1];
    b.mm[2][i] = static_cast<double>(v % X) * g.s[2];
  }
  return b;
}

// Ring search of the buckets (see the top), starting from `best` (a target voxel's squared distance, or inf).
double bucket_search(const int64_t qi[3], double best, const Buckets& b, const Grid& g) {
  const int64_t cq[3] = {qi[0] / b.c[0], qi[1] / b.c[1], qi[2] / b.c[2]};
  const double p[3] = {static_cast<double>(qi[0]) * g.s[0], static_cast<double>(qi[1]) * g.s[1],
                       static_cast<double>(qi[2]) * g.s[2]};
  const int64_t rings = std::max({b.m[0], b.m[1], b.m[2]});
  auto scan = [&](int64_t cz, int64_t cy, int64_t cx) {
    const int64_t cell = (cz * b.m[1] + cy) * b.m[2] + cx;
    const auto lo = static_cast<size_t>(b.start[static_cast<size_t>(cell)]);
    const auto hi = static_cast<size_t>(b.start[static_cast<size_t>(cell) + 1]);
    for (size_t i = lo; i < hi; ++i) {
      const double dz = b.mm[0][i] - p[0], dy = b.mm[1][i] - p[1], dx = b.mm[2][i] - p[2];
      best = std::min(best, dz * dz + dy * dy + dx * dx);
    }
  };
  for (int64_t k = 0; k < rings; ++k) {
    const int64_t z0 = std::max<int64_t>(cq[0] - k, 0), z1 = std::min<int64_t>(cq[0] + k, b.m[0] - 1);
    const int64_t y0 = std::max<int64_t>(cq[1] - k, 0), y1 = std::min<int64_t>(cq[1] + k, b.m[1] - 1);
    const int64_t x0 = std::max<int64_t>(cq[2] - k, 0), x1 = std::min<int64_t>(cq[2] + k, b.m[2] - 1);
    for (int64_t cz = z0; cz <= z1; ++cz) {
      for (int64_t cy = y0; cy <= y1; ++cy) {
        if (std::abs(cz - cq[0]) == k || std::abs(cy - cq[1]) == k) {
          for (int64_t cx = x0; cx <= x1; ++cx) scan(cz, cy, cx);
        } else {  // inside the ring on z and y: only its two x ends belong to it
          if (cq[2] - k >= 0) scan(cz, cy, cq[2] - k);
          if (k > 0 && cq[2] + k < b.m[2]) scan(cz, cy, cq[2] + k);
        }
      }
    }
    double bound = std::numeric_limits<double>::infinity();
    for (int a = 0; a < 3; ++a)
      if (g.active[a]) bound = std::min(bound, static_cast<double>(k * b.c[a] + 1) * g.s[a]);
    if (best <= bound * bound) break;
  }
  return best;
}

// Squared distance (mm^2) from voxel q to the nearest voxel of the target border (see the top).
double nearest_squared(int64_t q, const uint8_t* target, const Buckets& list, const Grid& g, double s_min) {
  if (target[q]) return 0.0;
  const int64_t Y = g.n[1], X = g.n[2];
  const int64_t qi[3] = {q / (Y * X), (q / X) % Y, q % X};
  const double inf = std::numeric_limits<double>::infinity();
  double best_so_far = inf;  // the nearest target voxel of the last box, if any
  for (double rho = s_min;; rho *= 2) {
    int64_t lo[3], hi[3];
    double cost = 1, bound = inf;
    bool whole = true;
    for (int a = 0; a < 3; ++a) {
      const int64_t r = g.active[a] ? static_cast<int64_t>(std::floor(rho / g.s[a])) : 0;
      lo[a] = std::max<int64_t>(qi[a] - r, 0);
      hi[a] = std::min<int64_t>(qi[a] + r, g.n[a] - 1);
      cost *= static_cast<double>(hi[a] - lo[a] + 1);
      whole = whole && lo[a] == 0 && hi[a] == g.n[a] - 1;
      if (g.active[a]) bound = std::min(bound, static_cast<double>(r + 1) * g.s[a]);
    }
    if (cost > kBoxLookups) return bucket_search(qi, best_so_far, list, g);
    double best = inf;
    for (int64_t z = lo[0]; z <= hi[0]; ++z) {
      const double dz = static_cast<double>(z - qi[0]) * g.s[0];
      for (int64_t y = lo[1]; y <= hi[1]; ++y) {
        const double dy = static_cast<double>(y - qi[1]) * g.s[1];
        const uint8_t* row = target + (z * Y + y) * X;
        for (int64_t x = lo[2]; x <= hi[2]; ++x) {
          if (!row[x]) continue;
          const double dx = static_cast<double>(x - qi[2]) * g.s[2];
          best = std::min(best, dz * dz + dy * dy + dx * dx);
        }
      }
    }
    if (whole || best <= bound * bound) return best;
    best_so_far = best;
  }
}

py::array_t<double> distances(const std::vector<int64_t>& queries, const std::vector<uint8_t>& target,
                              const Buckets& list, const Grid& g, double s_min) {
  py::array_t<double> out(static_cast<py::ssize_t>(queries.size()));
  double* d = out.mutable_data();
  const int64_t n = static_cast<int64_t>(queries.size());
  {
    py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 256)
    for (int64_t i = 0; i < n; ++i)
      d[i] = std::sqrt(nearest_squared(queries[static_cast<size_t>(i)], target.data(), list, g, s_min));
  }
  return out;
}

// (a: prediction border -> reference border, b: reference border -> prediction border), mm.
py::tuple surface_distances(const py::array& reference, const py::array& prediction, const std::vector<double>& spacing) {
  for (const py::array* m : {&reference, &prediction}) {
    require(m->ndim() == 3, "masks must be 3D (z, y, x), got shape " + shape_str(*m));
    require(m->dtype().kind() == 'b' || is_type<uint8_t>(m->dtype()), "masks must be bool or uint8, got " + dtype_str(*m));
    require_c_contiguous(*m, "mask");
  }
  require(shape_str(reference) == shape_str(prediction),
          "masks must have one shape, got " + shape_str(reference) + " and " + shape_str(prediction));
  require(spacing.size() == 3, "spacing must have 3 entries (z, y, x), got " + std::to_string(spacing.size()));
  Grid g;
  double s_min = std::numeric_limits<double>::infinity();
  for (int a = 0; a < 3; ++a) {
    require(std::isfinite(spacing[a]) && spacing[a] > 0, "spacing must be finite and > 0, got " + std::to_string(spacing[a]));
    g.n[a] = reference.shape(a), g.s[a] = spacing[a], g.active[a] = g.n[a] > 1;
    if (g.active[a]) s_min = std::min(s_min, spacing[a]);
  }
  const auto* ref = static_cast<const uint8_t*>(reference.data());
  const auto* pred = static_cast<const uint8_t*>(prediction.data());
  std::vector<uint8_t> ref_border, pred_border;
  std::vector<int64_t> ref_points, pred_points;
  {
    py::gil_scoped_release release;
    ref_points = find_border(ref, g, ref_border);
    pred_points = find_border(pred, g, pred_border);
  }
  require(!ref_points.empty() && !pred_points.empty(), "both masks must be non-empty");
  if (!std::isfinite(s_min)) s_min = 1.0;  // one voxel: every distance is 0 or the box is the grid
  const Buckets ref_mm = make_buckets(ref_points, g, s_min), pred_mm = make_buckets(pred_points, g, s_min);
  py::array_t<double> a = distances(pred_points, ref_border, ref_mm, g, s_min);
  py::array_t<double> b = distances(ref_points, pred_border, pred_mm, g, s_min);
  return py::make_tuple(a, b);
}

}  // namespace

void register_surface(py::module_& m) {
  m.def("surface_distances", &surface_distances, py::arg("reference"), py::arg("prediction"), py::arg("spacing"),
        "(a, b) float64: the distance in mm from each border voxel of the prediction mask to the nearest border "
        "voxel of the reference mask, and from each reference border voxel to the prediction's (exact; a border "
        "voxel has a face neighbour outside its mask or lies on the grid's edge; axes of one voxel do not count).");
}

}  // namespace fastseg::bind
