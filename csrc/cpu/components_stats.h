// Per-component statistics (voxel count, bounding box, value at the first voxel), gathered where the
// labels are made instead of by a second read of the label volume.
//
// Each thread fills its own ComponentTable (kernels.h) over a share of the work taken in raster
// order (rows, or row blocks), then the tables are folded in thread order: counts add, boxes grow,
// and a component's value is the one recorded by the first table that saw it, which is the value at
// its first voxel. Three sources feed the tables:
//
//   stats_of_runs (here)                 the run labeller's runs, one add_run per run;
//   block_stats (components_blocks.cpp)  the row-block labeller's OR-runs, one box per run;
//   component_stats (components.cpp)     a label volume, scanned in runs of equal labels.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "components_runs.h"
#include "kernels.h"

namespace fastseg::cpu::cc {

// Accumulates `voxels` voxels inside the box [z0, z1) x [y0, y1) x [x0, x1) into entry c of a
// thread's table; the first call for c also records `value`.
template <typename V>
void add_box(ComponentTable<V>& s, int64_t c, int64_t voxels, int64_t z0, int64_t y0, int64_t x0, int64_t z1,
             int64_t y1, int64_t x1, V value) {
  int64_t* b = &s.bbox[6 * c];
  if (s.count[c] == 0) {
    b[0] = z0, b[1] = y0, b[2] = x0, b[3] = z1, b[4] = y1, b[5] = x1;
    s.value[c] = value;
  } else {
    b[0] = std::min(b[0], z0), b[1] = std::min(b[1], y0), b[2] = std::min(b[2], x0);
    b[3] = std::max(b[3], z1), b[4] = std::max(b[4], y1), b[5] = std::max(b[5], x1);
  }
  s.count[c] += voxels;
}

// One run [x0, x1) of row (z, y).
template <typename V>
void add_run(ComponentTable<V>& s, int64_t c, int64_t z, int64_t y, int64_t x0, int64_t x1, V value) {
  add_box(s, c, x1 - x0, z, y, x0, z + 1, y + 1, x1, value);
}

// Folds per-thread tables into (count, bbox, value) [n], in thread order: counts add, boxes grow,
// and each value is that of the first table that saw the component (where threads took shares of
// the rows in order, the one of its first voxel).
template <typename V>
void fold_tables(const std::vector<ComponentTable<V>>& parts, int64_t n, int64_t* count, int64_t* bbox, V* value) {
  std::fill(count, count + n, int64_t{0});
  std::fill(bbox, bbox + 6 * n, int64_t{0});
  std::fill(value, value + n, V(0));
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n; ++c) {
    for (const ComponentTable<V>& s : parts) {
      if (s.count[c] == 0) continue;
      const int64_t* b = &s.bbox[6 * c];
      int64_t* d = bbox + 6 * c;
      if (count[c] == 0) {
        std::copy(b, b + 6, d);
        value[c] = s.value[c];
      } else {
        for (int a = 0; a < 3; ++a) d[a] = std::min(d[a], b[a]), d[a + 3] = std::max(d[a + 3], b[a + 3]);
      }
      count[c] += s.count[c];
    }
  }
}

// Statistics of labelled runs (parent[j] = label): each thread takes a share of the rows in order.
template <typename K, typename T>
void stats_of_runs(const T* in, const Runs<K>& t, ComponentTable<T>& out) {
  const int64_t H = t.g.H, W = t.g.W, n = t.n;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(worker_count(t.rows * W), t.rows)));
  std::vector<ComponentTable<T>> parts(threads);
#pragma omp parallel num_threads(threads)
  {
    const int s = omp_get_thread_num();
    ComponentTable<T>& mine = parts[s];
    mine.reset(n);
    const int64_t lo = s * t.rows / threads, hi = (s + 1) * t.rows / threads;
    for (int64_t r = lo; r < hi; ++r)
      for (int64_t j = t.offset[r]; j < t.offset[r + 1]; ++j)
        add_run<T>(mine, static_cast<int64_t>(t.parent[j]) - 1, r / H, r % H, t.start[j], t.stop[j], in[r * W + t.start[j]]);
  }
  out.reset(n);
  fold_tables(parts, n, out.count.get(), out.bbox.get(), out.value.get());
}

}  // namespace fastseg::cpu::cc
