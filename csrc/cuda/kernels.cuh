// CUDA launchers: bounds-checked kernels over the FASTSEG_HD bodies of csrc/include/fastseg. They
// compute what the CPU launchers of csrc/cpu compute (same bodies, same order of operations), on
// device pointers and on the caller's stream. The bindings in module.cpp validate first.
//
// This header is read by the host compiler too (module.cpp), so it holds declarations only: no
// __global__, no <<<>>>. Every launcher returns at once when there is nothing to compute, and
// throws std::runtime_error carrying the CUDA error string when a launch fails.
//
// Layouts are C-contiguous; a volume is (C, D, H, W) = (channel, z, y, x) as in fastseg/hd.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastseg::cuda {

// One axis of a separable resample, float32 device arrays:
//   in   [outer, n_in, inner]
//   out  [outer, n_out, inner]
//   coef [outer, n_in + 2 * kSplinePad, inner]  scratch for order 3 (B-spline coefficients of the
//        edge-padded lines); unused, may be null, for orders 0 and 1.
// order is 0 (nearest), 1 (linear) or 3 (cubic B-spline).
void resample_axis(const float* in, float* out, float* coef, int64_t outer, int64_t n_in, int64_t inner,
                   int64_t n_out, int order, cudaStream_t stream);

// Segmentation resample by the label vote (seg_vote), device arrays:
//   in  [in_shape]  = (C, D, H, W) labels
//   out [out_shape] = (C, D', H', W'), out_shape[0] == in_shape[0]
// orders[a] (0 nearest, 1 linear vote) for the spatial axes (z, y, x). `strict` picks the vote
// rule: SegVote::kThresholdStrict when true, else kArgmaxNearest (see fastseg/resample.h).
// `zero_is_label`: whether the input holds a 0 (the caller reduces it; the CPU launcher computes it
// itself).
template <typename L>
void resample_seg(const L* in, L* out, const int64_t in_shape[4], const int64_t out_shape[4], const int orders[3],
                  bool strict, bool zero_is_label, cudaStream_t stream);

}  // namespace fastseg::cuda
