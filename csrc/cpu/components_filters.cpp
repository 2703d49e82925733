// nnU-Net's largest-component filter and hole filling, on the run labeller (components_runs.h).
//
// Both label a mask that a key makes of the input, and need only steps 1-4 of the run labeller: the
// labelled runs say everything, so no label volume is written.
//
//   remove_all_but_largest: the mask is membership in a set of labels (TableKey: a lookup table for
//     8- and 16-bit inputs; ListKey: the short member list for wider ones). Component sizes are
//     summed over the runs; the output copies the input row by row and overwrites the runs of every
//     component smaller than the largest with the background label (all components that tie for
//     the largest stay, as acvl_utils keeps them).
//   fill_holes: the mask is the background (ZeroKey). A background component is open when one of
//     its runs touches the border of the volume (or of its slice, for in-plane connectivities): a
//     run in the first or last row or plane, or one that starts at x = 0 or ends at W. The output is
//     the foreground plus the runs of closed components, scipy's binary_fill_holes.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "components_runs.h"
#include "kernels.h"

namespace fastseg::cpu {

using cc::Grid;
using cc::grid_of;
using cc::kRowChunk;
using cc::label_runs;
using cc::ListKey;
using cc::row_stencil;
using cc::Runs;
using cc::TableKey;
using cc::ZeroKey;

namespace {

template <typename Key, typename T>
void keep_largest(const T* seg, T* out, Grid g, const Key& key, T background, int connectivity) {
  Runs<uint8_t> t;
  label_runs(seg, g, connectivity, key, t);
  const int64_t W = g.W;
  // Sizes, then keep every component of the largest size (acvl_utils keeps all that tie).
  std::vector<int64_t> size(t.n + 1, 0);
  for (int64_t j = 0; j < t.total; ++j) size[t.parent[j]] += t.stop[j] - t.start[j];
  const int64_t largest = *std::max_element(size.begin(), size.end());
#pragma omp parallel for schedule(dynamic, kRowChunk)
  for (int64_t r = 0; r < t.rows; ++r) {
    std::memcpy(out + r * W, seg + r * W, W * sizeof(T));
    for (int64_t j = t.offset[r]; j < t.offset[r + 1]; ++j)
      if (size[t.parent[j]] != largest) std::fill(out + r * W + t.start[j], out + r * W + t.stop[j], background);
  }
}

}  // namespace

template <typename T>
void remove_all_but_largest(const T* seg, T* out, const int64_t shape[3], const T* members, int64_t n_members,
                            T background, int connectivity) {
  const Grid g = grid_of(shape);
  if (g.D * g.H * g.W == 0) return;
  if constexpr (sizeof(T) <= 2) {
    std::vector<uint8_t> table(size_t{1} << (8 * sizeof(T)), 0);
    for (int64_t i = 0; i < n_members; ++i) table[members[i]] = 1;
    keep_largest(seg, out, g, TableKey<T>{table.data()}, background, connectivity);
  } else {
    keep_largest(seg, out, g, ListKey<T>{members, n_members}, background, connectivity);
  }
}

template <typename T>
void fill_holes(const T* mask, uint8_t* out, const int64_t shape[3], int connectivity) {
  const Grid g = grid_of(shape);
  if (g.D * g.H * g.W == 0) return;
  Runs<uint8_t> t;
  label_runs(mask, g, connectivity, ZeroKey<T>{}, t);
  const bool volumetric = row_stencil(connectivity).volumetric;
  const int64_t D = g.D, H = g.H, W = g.W;
  // Background components that reach the border of the volume (of each slice when in-plane) stay.
  std::vector<uint8_t> open(t.n + 1, 0);
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t z = r / H, y = r % H;
    const int64_t first = t.offset[r], last = t.offset[r + 1];
    if (first == last) continue;
    if (y == 0 || y == H - 1 || (volumetric && (z == 0 || z == D - 1))) {
      for (int64_t j = first; j < last; ++j) open[t.parent[j]] = 1;
    } else {
      if (t.start[first] == 0) open[t.parent[first]] = 1;
      if (t.stop[last - 1] == W) open[t.parent[last - 1]] = 1;
    }
  }
#pragma omp parallel for schedule(dynamic, kRowChunk)
  for (int64_t r = 0; r < t.rows; ++r) {
    const T* in = mask + r * W;
    uint8_t* o = out + r * W;
    for (int64_t x = 0; x < W; ++x) o[x] = in[x] != T(0);
    for (int64_t j = t.offset[r]; j < t.offset[r + 1]; ++j)
      if (!open[t.parent[j]]) std::fill(o + t.start[j], o + t.stop[j], uint8_t{1});
  }
}

#define FASTSEG_INSTANTIATE_FILTERS(T)                                                                     \
  template void remove_all_but_largest<T>(const T*, T*, const int64_t[3], const T*, int64_t, T, int);    \
  template void fill_holes<T>(const T*, uint8_t*, const int64_t[3], int);
FASTSEG_INSTANTIATE_FILTERS(uint8_t)
FASTSEG_INSTANTIATE_FILTERS(uint16_t)
FASTSEG_INSTANTIATE_FILTERS(uint32_t)
FASTSEG_INSTANTIATE_FILTERS(uint64_t)
#undef FASTSEG_INSTANTIATE_FILTERS

}  // namespace fastseg::cpu
