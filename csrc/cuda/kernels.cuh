// CUDA launchers: bounds-checked kernels over the FASTSEG_HD bodies of csrc/include/fastseg. They
// compute what the CPU launchers of csrc/cpu compute (same bodies, same order of operations), on
// device pointers and on the caller's stream. The bindings (module.cpp, bind_*.cpp) validate first.
//
// This header is read by the host compiler too (the bindings), so it holds declarations only: no
// __global__, no <<<>>>. Every launcher returns at once when there is nothing to compute, and
// throws std::runtime_error carrying the CUDA error string when a launch fails.
//
// Layouts are C-contiguous; a volume is (C, D, H, W) = (channel, z, y, x) as in fastseg/hd.h.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "fastseg/components.h"
#include "fastseg/inference.h"

namespace fastseg::cuda {

// One axis of a separable resample, device arrays:
//   in   [outer, n_in, inner]                   float32
//   out  [outer, n_out, inner]                  float32
//   coef [outer, n_in + 2 * kSplinePad, inner]  double scratch for order 3 (B-spline coefficients of
//        the edge-padded lines, in the CPU's precision); unused, may be null, for orders 0 and 1.
// order is 0 (nearest), 1 (linear) or 3 (cubic B-spline).
void resample_axis(const float* in, float* out, double* coef, int64_t outer, int64_t n_in, int64_t inner,
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

// --- connected components (components.cu) ----------------------------------------------------

// labels [D, H, W]: each foreground voxel's root (its component's first voxel, as a linear index),
// kNoLabel for background.
template <typename T>
void label_components(const T* in, cc_index_t* labels, const int64_t shape[3], int connectivity, bool binary,
                      cudaStream_t stream);
// flags[v] = 1 where labels[v] == v (a root), else 0.
void mark_roots(const cc_index_t* labels, int32_t* flags, int64_t total, cudaStream_t stream);
// labels[v] = rank[labels[v]] (0 for background): roots to labels 1..n given the prefix sum of flags.
void relabel(cc_index_t* labels, const int32_t* rank, int64_t total, cudaStream_t stream);

// --- inference (inference.cu) -----------------------------------------------------------------

// acc [C, D, H, W] += tiles[b] * importance at offsets[b]; weights [D, H, W] += importance; weights
// and importance may be null. image = (C, D, H, W), tile = (B, C, d, h, w). The offsets [B, 3]
// (checked by the binding) are on the host; they are copied into device_offsets [B, 3] on `stream`
// first, and the kernel reads that copy.
template <typename T>
void accumulate_tiles(float* acc, float* weights, const T* tiles, const int64_t* host_offsets, int64_t* device_offsets,
                      const float* importance, const int64_t image[4], const int64_t tile[5], cudaStream_t stream);
// Fused resample + label of logits [C, D, H, W] (divided by weights [D, H, W] when not null) to
// labels [D', H', W'] and optionally probabilities [C, D', H', W']; region_labels [C] (device int32)
// for ExportMode::kRegions.
template <typename T, typename L>
void export_segmentation(const T* logits, const float* weights, const int64_t in_shape[4], const int64_t out_shape[3],
                         const int orders[3], ExportMode mode, const int32_t* region_labels, L* labels,
                         float* probabilities, cudaStream_t stream);

}  // namespace fastseg::cuda
