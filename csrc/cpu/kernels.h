// CPU launchers: OpenMP loops over the FASTSEG_HD bodies. Raw pointers, C-contiguous arrays; the
// bindings in module.cpp validate and allocate.
#pragma once

#include <cstdint>

#include "fastseg/normalize.h"

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

}  // namespace fastseg::cpu
