// CPU launchers: OpenMP loops over the FASTSEG_HD bodies. Raw pointers, C-contiguous arrays; the
// bindings (module.cpp, bind_*.cpp) validate and allocate.
#pragma once

#include <algorithm>
#include <cstdint>

#include "fastseg/components.h"
#include "fastseg/inference.h"
#include "fastseg/normalize.h"
#include "scratch.h"

namespace fastseg::cpu {

// One axis of a separable resample: in (outer, n_in, inner) -> out (outer, n_out, inner), float32.
void resample_axis(const float* in, float* out, int64_t outer, int64_t n_in, int64_t inner, int64_t n_out, int order);

// Per-group min/max and count of non-finite values of x (C, D, H, W). group_axis = 0 groups by
// channel; 1, 2 or 3 groups by (channel, index along that axis). lo/hi hold C * groups entries.
int64_t minmax_groups(const float* x, const int64_t* shape, int group_axis, float* lo, float* hi);
void clip_groups(float* x, const int64_t* shape, int group_axis, const float* lo, const float* hi);

// Segmentation resample of in (C, D, H, W) labels to out (C, D', H', W') by the label vote; per axis
// order 0 (nearest) or 1 (linear vote). strict: SegVote::kThresholdStrict, else kArgmaxNearest.
template <typename L>
void resample_seg(const L* in, L* out, const int64_t* in_shape, const int64_t* out_shape, const int* orders,
                  bool strict);

// Whether any element equals zero.
template <typename L>
bool contains_zero(const L* x, int64_t n);

struct Moments {
  int64_t count = 0;
  int64_t nonfinite = 0;
  double mean = 0.0;
  double std = 0.0;
  double min = 0.0;
  double max = 0.0;
};

// Statistics of x over mask (nullptr: all elements); non-finite values are counted, not summed.
template <typename T>
Moments moments(const T* x, const uint8_t* mask, int64_t n);

// out = normalize_value(float(x)) where mask (or everywhere), float(x) elsewhere. Returns the number
// of non-finite inputs.
template <typename T>
int64_t normalize_apply(const T* x, float* out, const uint8_t* mask, int64_t n, AffineParams p);

// --- connected components (components*.cpp) --------------------------------------------------

// Per-component statistics, entry c describing label c + 1, in scratch memory (scratch.h): tables of
// a few hundred thousand components would otherwise spend longer faulting in pages than filling them.
// reset() zeroes the counts only; a box and a value are meaningful where the count is not 0.
template <typename V>
struct ComponentTable {
  Scratch<int64_t> count;  // [n] voxels
  Scratch<int64_t> bbox;   // [n, 6] z0, y0, x0, z1, y1, x1, stops exclusive
  Scratch<V> value;        // [n] input value at the component's first voxel
  void reset(int64_t n) {
    count.reset(n);
    bbox.reset(6 * n);
    value.reset(n);
    std::fill(count.get(), count.get() + n, int64_t{0});
  }
};

// labels: out [D, H, W], 0 for background, components 1..n in raster order of their first voxel.
// binary: every nonzero voxel is foreground; else voxels connect only when their values are equal.
// stats (may be null): filled from the run tables as the labels are made, without reading them back.
template <typename T>
int64_t connected_components(const T* in, cc_index_t* out, const int64_t shape[3], int connectivity, bool binary,
                             ComponentTable<T>* stats = nullptr);
// Per label 1..n of labels [D, H, W]: count [n], bbox [n, 6] (z0, y0, x0, z1, y1, x1, stops
// exclusive), value [n] (image at the component's first voxel; 1 when image is null). Returns the
// largest label above n that was found (and skipped), 0 when there is none.
template <typename L, typename V>
uint64_t component_stats(const L* labels, const V* image, const int64_t shape[3], int64_t n, int64_t* count,
                         int64_t* bbox, V* value);
// out = seg, except that voxels of members[0..n_members) outside the largest component(s) of their
// union become `background`.
template <typename T>
void remove_all_but_largest(const T* seg, T* out, const int64_t shape[3], const T* members, int64_t n_members,
                            T background, int connectivity);
// out = mask, or 1 where the background component (under `connectivity`) does not reach the border.
template <typename T>
void fill_holes(const T* mask, uint8_t* out, const int64_t shape[3], int connectivity);

// --- inference (inference.cpp) ----------------------------------------------------------------

// acc [C, D, H, W] += tiles[b] * importance at offsets[b]; weights [D, H, W] += importance (both may
// be null: weights skipped, importance 1). tiles [B, C, d, h, w], offsets [B, 3] (z, y, x) with every
// tile inside the image, importance [d, h, w]. image = (C, D, H, W), tile = (B, C, d, h, w).
template <typename T>
void accumulate_tiles(float* acc, float* weights, const T* tiles, const int64_t* offsets, const float* importance,
                      const int64_t image[4], const int64_t tile[5]);
// Number of NaN and +-Inf among x [n] (float, Half or BFloat16 storage).
template <typename T>
int64_t count_nonfinite(const T* x, int64_t n);
// acc [C, voxels] /= weights [voxels], in place.
void normalize_accumulated(float* acc, const float* weights, int64_t C, int64_t voxels);
// logits [C, D, H, W] (divided by weights [D, H, W] when not null) resampled to out_shape (D', H', W')
// with per-axis order 0/1 and labelled by `mode`: labels [D', H', W'], probabilities [C, D', H', W']
// (softmax or sigmoid; may be null). region_labels [C] for ExportMode::kRegions.
template <typename T, typename L>
void export_segmentation(const T* logits, const float* weights, const int64_t in_shape[4], const int64_t out_shape[3],
                         const int orders[3], ExportMode mode, const int32_t* region_labels, L* labels,
                         float* probabilities);

}  // namespace fastseg::cpu
