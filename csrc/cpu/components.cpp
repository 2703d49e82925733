// CPU connected-component labelling: the launchers (declared in kernels.h, bound in
// bind_components.cpp).
//
// Labels are 1..n in raster order (z, y, x, x fastest) of each component's first voxel, whatever the
// thread count, so the CPU and CUDA paths agree (fastseg/components.h states the contract and holds
// the union-find bodies). Which labeller runs:
//
//   masks (binary) under full connectivity, 26 or 8    row-block labeller, components_blocks.h
//   every other mask or connectivity, and label maps    run labeller, components_runs.h
//
// Statistics (counts, boxes, first values) come from the labeller's own tables in the same call
// (components_stats.h), or from a label volume (component_stats below). nnU-Net's largest-component
// filter and hole filling: components_filters.cpp. Shared definitions: components_common.h.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "components_blocks.h"
#include "components_runs.h"
#include "components_stats.h"
#include "kernels.h"

namespace fastseg::cpu {

using cc::add_run;
using cc::fold_tables;
using cc::Grid;
using cc::grid_of;
using cc::label_blocks;
using cc::label_runs;
using cc::NonzeroKey;
using cc::Runs;
using cc::stats_of_runs;
using cc::ValueKey;
using cc::write_labels;

template <typename T>
int64_t connected_components(const T* in, cc_index_t* out, const int64_t shape[3], int connectivity, bool binary,
                             ComponentTable<T>* stats) {
  const Grid g = grid_of(shape);
  if (binary && (connectivity == 26 || connectivity == 8))
    return label_blocks(in, out, g, connectivity, NonzeroKey<T>{}, stats);
  if (binary) {
    Runs<uint8_t> t;
    label_runs(in, g, connectivity, NonzeroKey<T>{}, t);
    write_labels(in, NonzeroKey<T>{}, t, out);
    if (stats) stats_of_runs(in, t, *stats);
    return t.n;
  }
  Runs<T> t;
  label_runs(in, g, connectivity, ValueKey<T>{}, t);
  write_labels(in, ValueKey<T>{}, t, out);
  if (stats) stats_of_runs(in, t, *stats);
  return t.n;
}

template <typename L, typename V>
uint64_t component_stats(const L* labels, const V* image, const int64_t shape[3], int64_t n, int64_t* count,
                         int64_t* bbox, V* value) {
  const int64_t H = shape[1], W = shape[2], rows = shape[0] * shape[1];
  // One table per thread over a static split of the rows (thread order is raster order), folded
  // into the outputs in thread order, so that each value is the one of the component's first voxel.
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), rows)));
  std::vector<ComponentTable<V>> parts(threads);
  std::vector<uint64_t> beyond(threads, 0);  // largest label above n seen by each thread
#pragma omp parallel num_threads(threads)
  {
    const int s = omp_get_thread_num();
    ComponentTable<V>& mine = parts[s];
    mine.reset(n);
    const int64_t lo = s * rows / threads, hi = (s + 1) * rows / threads;
    for (int64_t r = lo; r < hi; ++r) {
      const L* row = labels + r * W;
      for (int64_t x = 0, e; x < W; x = e) {
        const L l = row[x];
        for (e = x + 1; e < W && row[e] == l;) ++e;
        if (l == L(0)) continue;
        if (static_cast<uint64_t>(l) > static_cast<uint64_t>(n)) {
          beyond[s] = std::max<uint64_t>(beyond[s], l);
          continue;
        }
        add_run<V>(mine, static_cast<int64_t>(l) - 1, r / H, r % H, x, e, image ? image[r * W + x] : V(1));
      }
    }
  }
  fold_tables(parts, n, count, bbox, value);
  return *std::max_element(beyond.begin(), beyond.end());
}

#define FASTSEG_INSTANTIATE_CC(T)                                                                          \
  template int64_t connected_components<T>(const T*, cc_index_t*, const int64_t[3], int, bool, ComponentTable<T>*);          \
  template uint64_t component_stats<uint8_t, T>(const uint8_t*, const T*, const int64_t[3], int64_t,     \
                                                int64_t*, int64_t*, T*);                                 \
  template uint64_t component_stats<uint16_t, T>(const uint16_t*, const T*, const int64_t[3], int64_t,   \
                                                 int64_t*, int64_t*, T*);                                \
  template uint64_t component_stats<uint32_t, T>(const uint32_t*, const T*, const int64_t[3], int64_t,   \
                                                 int64_t*, int64_t*, T*);                                \
  template uint64_t component_stats<uint64_t, T>(const uint64_t*, const T*, const int64_t[3], int64_t,   \
                                                 int64_t*, int64_t*, T*);
FASTSEG_INSTANTIATE_CC(uint8_t)
FASTSEG_INSTANTIATE_CC(uint16_t)
FASTSEG_INSTANTIATE_CC(uint32_t)
FASTSEG_INSTANTIATE_CC(uint64_t)
#undef FASTSEG_INSTANTIATE_CC

}  // namespace fastseg::cpu
