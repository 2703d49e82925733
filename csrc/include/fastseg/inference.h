// Inference bodies: Gaussian-weighted tile accumulation and the fused export (resample + argmax).
//
// Sliding-window prediction (what nnU-Net's predictor computes, restated):
//
//   The network sees tiles of the (padded) image at offsets from sliding_window_steps. Each
//   predicted tile p_b (C, d, h, w) is multiplied by a Gaussian importance map g (d, h, w) and
//   added into an accumulator A (C, D, H, W) at its offset o_b; g itself is added into a weight map
//   N (D, H, W) at the same place:
//
//       A[:, o_b + t] += p_b[:, t] * g[t]        N[o_b + t] += g[t]        for every tile voxel t
//
//   The logits at the network's spacing are A / N. Tiles of one batch may overlap, so two tiles can
//   add into the same voxel: the CPU launcher gives every thread whole image rows (all tiles that
//   cross a row are added by the thread owning it, in batch order: no races, and a deterministic
//   sum); the CUDA and Triton launchers use one atomic float add per tile element.
//
//            x ->              tile b0 covers rows y0..y0+h, tile b1 rows y1..y1+h;
//     y   +-----------+        a thread owns row (z, y) of A and N and adds, in order,
//     |   | b0  +-----+--+     the x-segments of b0 and b1 that lie on it.
//     v   |     | b0  |  |
//         +-----+--b1-+  |
//               |    b1  |
//               +--------+
//
// Export (nnU-Net's convert_predicted_logits_to_segmentation_with_correct_shape): the logits are
// resampled to the original shape with linear interpolation (order 1; the separately resampled
// axis of nnU-Net's separate-z rule, and every axis whose size does not change, with order 0:
// one tap of weight 1), then argmax over classes. Per output voxel (d, h, w) and class c the
// interpolated logit is the tensor product over the three axes' taps (sample_taps of resample.h):
//
//       v_c = sum_e wx[e] * ( sum_b wy[b] * ( sum_a wz[a] * L[c, iz[a], iy[b], ix[e]] ) )
//
// with L = logits / weights when the weight map is given (the division happens on the input
// samples, as nnU-Net divides before resampling). Both launchers evaluate exactly this nesting with
// combine_taps, in float32 with float32 tap weights, so CPU and CUDA agree bit for bit on v_c (the
// CUDA build disables FMA contraction). The CPU evaluates it separably on whole rows (all z-sums of
// the input rows an output row needs, then the y-sums, then the x-sums); the GPU per voxel.
//
// The argmax is kept on the fly (argmax_update: the first class with the largest value wins, as
// numpy's argmax), so no (C, output) array is ever built unless probabilities are asked for.
// Region-based models (sigmoid outputs) label a voxel with the last region, in regions_class_order,
// whose probability exceeds 0.5: sigmoid(v) > 0.5 <=> v > 0 (region_update).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastseg/hd.h"

namespace fastseg {

// --- 16-bit float storage ------------------------------------------------------------------------

// IEEE binary16 and bfloat16 values as raw bits: distinct types, so that to_float picks the
// conversion. Neither needs hardware support (the portable x86-64 baseline has no F16C).
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

FASTSEG_HD float float_from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

FASTSEG_HD uint32_t bits_from_float(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

FASTSEG_HD float to_float(float v) { return v; }

// binary16 -> binary32, exact for every non-NaN value (NaN stays NaN), branch-free so that a CPU
// loop over it vectorises. The exponent and mantissa bits move to float32's positions; the exponent
// bias then reads 15 too low against float32's 127, which a multiplication by 2^112 repairs exactly
// (half subnormals become float32 normals on the way). Inf and NaN (half exponent all ones, i.e.
// magnitude >= 0x7c00, i.e. bit 15 of magnitude + 0x400) get float32's all-ones exponent OR-ed in.
FASTSEG_HD float to_float(Half h) {
  const uint32_t sign = (static_cast<uint32_t>(h.bits) & 0x8000u) << 16;
  const uint32_t magnitude = static_cast<uint32_t>(h.bits) & 0x7fffu;
  const uint32_t finite = bits_from_float(float_from_bits(magnitude << 13) * 5.192296858534828e33f);  // 2^112
  const uint32_t special = (0u - ((magnitude + 0x0400u) >> 15)) & 0x7f800000u;
  return float_from_bits(finite | special | sign);
}

// bfloat16 is the upper half of a float32.
FASTSEG_HD float to_float(BFloat16 b) { return float_from_bits(static_cast<uint32_t>(b.bits) << 16); }

// --- accumulation --------------------------------------------------------------------------------

// Where a batch of tiles leaves the image, for the bindings' checks (host code; no exception here).
// Returns b * 3 + a for the first tile b and spatial axis a (z, y, x) whose tile does not fit, or -1
// when all B tiles do. Tile b fits along axis a when
//     0 <= offsets[b, a] <= image[a + 1] - tile[a + 2]
// and the caller has checked tile[a + 2] <= image[a + 1] before. The sum offset + tile is never
// formed: near 2^63 it wraps around to a negative number, and a tile far outside would pass.
//   offsets [B, 3]   image (C, D, H, W)   tile (B, C, d, h, w)
inline int64_t first_tile_outside(const int64_t* offsets, const int64_t image[4], const int64_t tile[5]) {
  for (int64_t b = 0; b < tile[0]; ++b)
    for (int a = 0; a < 3; ++a) {
      const int64_t o = offsets[b * 3 + a];
      if (o < 0 || o > image[a + 1] - tile[a + 2]) return b * 3 + a;
    }
  return -1;
}

// What one predicted tile element adds to the accumulator: its logit times the importance weight.
template <typename T>
FASTSEG_HD float weighted_logit(T logit, float importance) {
  return to_float(logit) * importance;
}

// acc[i] += tile[i] * importance[i] for one contiguous x-segment of n elements. importance may be
// null (no Gaussian: weight 1).
template <typename T>
FASTSEG_HD void accumulate_segment(float* __restrict__ acc, const T* __restrict__ tile,
                                   const float* __restrict__ importance, int64_t n) {
  if (importance == nullptr) {
    for (int64_t i = 0; i < n; ++i) acc[i] += weighted_logit(tile[i], 1.0f);
  } else {
    for (int64_t i = 0; i < n; ++i) acc[i] += weighted_logit(tile[i], importance[i]);
  }
}

// weights[i] += importance[i] (1 without importance map) for one x-segment.
FASTSEG_HD void weight_segment(float* __restrict__ weights, const float* __restrict__ importance, int64_t n) {
  if (importance == nullptr) {
    for (int64_t i = 0; i < n; ++i) weights[i] += 1.0f;
  } else {
    for (int64_t i = 0; i < n; ++i) weights[i] += importance[i];
  }
}

// --- export --------------------------------------------------------------------------------------

// An accumulated logit divided by its accumulated weight (IEEE division, as numpy/torch divide).
template <typename T>
FASTSEG_HD float normalized_logit(T logit, float weight) {
  return to_float(logit) / weight;
}

// One level of the tensor-product interpolation: sum_k w[k] * v[k], summed in tap order, float32.
FASTSEG_HD float combine_taps(const float* v, const float* w, int n) {
  float acc = w[0] * v[0];
  for (int k = 1; k < n; ++k) acc += w[k] * v[k];
  return acc;
}

// Running argmax over classes visited in order 0, 1, ...: the first class with the largest value
// keeps the label (numpy/torch argmax). Class 0 initialises. Selects, not branches: the CPU loop
// over a row vectorises, and a GPU warp does not diverge.
FASTSEG_HD void argmax_update(float v, int32_t c, float& best, int32_t& label) {
  const bool take = c == 0 || v > best;
  best = take ? v : best;
  label = take ? c : label;
}

// Region-based labelling, regions visited in regions_class_order: a region whose sigmoid exceeds
// 0.5, i.e. whose logit is positive, overwrites the label (background 0 stays where none does).
FASTSEG_HD int32_t region_update(float logit, int32_t region_label, int32_t label) {
  return logit > 0.0f ? region_label : label;
}

// c ? a : b as a bit mask. Where a ternary would do, GCC may thread it into branches (and then,
// respecting -ftrapping-math, not vectorise the loop); a mask stays a select on every target.
FASTSEG_HD float select_float(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return float_from_bits((bits_from_float(a) & m) | (bits_from_float(b) & ~m));
}

// exp for the probabilities, in float32, branch-free (so that CPU loops over it vectorise) and the
// same on CPU and GPU. x = k ln2 + r with k = round(x / ln2) (adding and subtracting 1.5 * 2^23
// rounds to nearest) and |r| <= ln2 / 2 (ln2 split in two constants, Cody-Waite); exp(r) by
// Cephes' degree-6 polynomial; 2^k from its exponent bits. Within 1 ulp of expf; 0 below -87.34
// (where float32 normals end; expf still gives subnormals there), capped at exp(88) above; NaN
// stays NaN.
FASTSEG_HD float fast_exp(float x) {
  constexpr float kLow = -87.33654f;  // ln(2^-126)
  constexpr float kHigh = 88.0f;      // keeps k <= 127
  const float t = select_float(x > kLow, select_float(x < kHigh, x, kHigh), kLow);  // NaN -> kLow
  const float k = (t * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = t - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = (p * (r * r) + r) + 1.0f;
  const float scale = float_from_bits(static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23);
  return select_float(x != x, x, select_float(x < kLow, 0.0f, y * scale));
}

FASTSEG_HD float sigmoid(float v) { return 1.0f / (1.0f + fast_exp(-v)); }

// Softmax over the classes of one voxel: p_c = exp(v_c - m) / sum_k exp(v_k - m), m = max_k v_k,
// maximum and sum taken in class order. Written as per-element steps so that the CPU runs them
// across a row of voxels (class-outer, vectorised) and the GPU across the classes of one voxel,
// with the same operations in the same order.
FASTSEG_HD float softmax_max(float m, float v) { return v > m ? v : m; }
FASTSEG_HD float softmax_numerator(float v, float m) { return fast_exp(v - m); }

// The steps on the n class values of one voxel, stored `stride` apart, in place.
FASTSEG_HD void softmax_strided(float* v, int64_t n, int64_t stride) {
  float m = v[0];
  for (int64_t c = 1; c < n; ++c) m = softmax_max(m, v[c * stride]);
  float sum = 0.0f;
  for (int64_t c = 0; c < n; ++c) {
    const float e = softmax_numerator(v[c * stride], m);
    v[c * stride] = e;
    sum += e;
  }
  for (int64_t c = 0; c < n; ++c) v[c * stride] /= sum;
}

// How the export turns class values into a label.
enum class ExportMode : int {
  kArgmax = 0,   // softmax outputs: the class with the largest logit (probability)
  kRegions = 1,  // sigmoid outputs: regions_class_order, later regions overwrite (region_update)
};

}  // namespace fastseg
