// Intensity augmentation bodies: nnU-Net's per-sample transforms after the spatial one (Gaussian blur,
// multiplicative brightness, contrast, low-resolution simulation, gamma), as batchgeneratorsv2 computes
// them with torch, per channel of one sample.
//
//   blur         a separable Gaussian per axis: window k = the odd integer nearest to 6 sigma + 1/2
//                (Python's round, ties to even, then away from the even neighbour towards 6 sigma + 1/2),
//                taps exp(-x^2 / (2 sigma^2)) at x = -(k-1)/2 .. (k-1)/2, normalized to sum 1; borders
//                mirrored without repeating the edge (torch's pad mode "reflect": index -1 reads 1).
//   low res      nearest-exact down to m voxels per axis, then linear back up to n (align_corners
//                False), as torch's interpolate: the downsampled voxel j reads
//                    min(floorf(float((j + 1/2) * float(n / m))), n - 1)
//                (the product in double, rounded to float32 before the floor: torch's arithmetic), and
//                the output voxel i reads s = float(m / n) * (i + 1/2) - 1/2 (0 below 0) between
//                floor(s) and floor(s) + 1 (clamped to m - 1) with weights 1 - f, f; applied axis by
//                axis, x first, which is the nesting of torch's bilinear / trilinear sum.
//   contrast     (x - mean) * f + mean, clipped to the channel's [min, max] (preserve_range).
//   gamma        ((x - min) / max(max - min, 1e-7)) ** g * (max - min) + min, then shifted and scaled
//                back to the former mean and unbiased standard deviation (retain_stats; the new std
//                floored at 1e-7); the inverted variant negates the channel before and after.
//
// Means and standard deviations accumulate in double; element arithmetic is float32 in torch's order.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fastseg/hd.h"

namespace fastseg {

constexpr float kGammaEps = 1e-7f;  // batchgeneratorsv2's GammaTransform: floor of the range and of the std

// batchgeneratorsv2's _compute_kernel_size(sigma, truncate=6): the odd integer nearest to 6 sigma + 1/2.
FASTSEG_HD int64_t blur_window(double sigma) {
  const double n = sigma * 6.0 + 0.5;
  const double rounded = nearbyint(n);  // ties to even, as Python's round()
  const int64_t r = static_cast<int64_t>(rounded);
  if (r % 2 != 0) return r;
  return n - rounded >= 0.0 ? r + 1 : r - 1;
}

// torch's pad(mode="reflect") index: i in (-n, 2n - 1) folded into [0, n) without repeating the edge.
FASTSEG_HD int64_t reflect_index(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

// Nearest-exact source voxel of downsampled voxel j (n -> m voxels), torch's float32 arithmetic.
FASTSEG_HD int64_t nearest_exact_source(int64_t j, int64_t n, int64_t m) {
  const float scale = static_cast<float>(n) / static_cast<float>(m);
  const int64_t k = static_cast<int64_t>(floor_value(static_cast<float>((static_cast<double>(j) + 0.5) * scale)));
  return k < n - 1 ? k : n - 1;
}

// Linear (align_corners=False) source of output voxel i (m -> n voxels): first voxel and the second's weight.
FASTSEG_HD void linear_source(int64_t i, int64_t m, int64_t n, int64_t* first, float* weight) {
  const float scale = static_cast<float>(m) / static_cast<float>(n);
  float s = scale * (static_cast<float>(i) + 0.5f) - 0.5f;
  if (s < 0.0f) s = 0.0f;
  int64_t k = static_cast<int64_t>(floor_value(s));
  if (k > m - 1) k = m - 1;
  float f = s - static_cast<float>(k);
  *first = k;
  *weight = f < 0.0f ? 0.0f : (f > 1.0f ? 1.0f : f);
}

// The contrast of one value: (x - mean) * factor + mean, within [lo, hi].
FASTSEG_HD float contrast_value(float x, float mean, float factor, float lo, float hi) {
  return clamp_value((x - mean) * factor + mean, lo, hi);
}

// x ** g for x in [0, 1] and g > 0, as exp2(g log2 x), within a few float32 ulps of powf (the gamma's
// pow is the costliest step; this form has no library call and no branch, so a loop of it vectorizes).
// log2 x = e + log2 m with x = 2^e m, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(t), t = (m - 1) / (m + 1)
// (|t| <= 0.172: the series to t^9 leaves < 1e-9); exp2 y = 2^n exp(f ln 2), n = y rounded, |f| <= 1/2
// (Taylor to degree 7: < 1e-8). x below the smallest normal float gives 0; results below 2^-126 give 2^-126.
// The CPU build compiles its caller with -fno-trapping-math, which lets the selections below stay
// branch-free (no result changes: it only drops the assumption that a program reads FP exceptions).
FASTSEG_HD float pow_unit(float x, float g) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  int32_t e = static_cast<int32_t>(bits >> 23) - 127;
  const uint32_t mantissa = (bits & 0x7fffffu) | 0x3f800000u;
  float m;
  memcpy(&m, &mantissa, sizeof m);
  const bool fold = m > 1.41421356f;
  m = fold ? m * 0.5f : m;
  e = fold ? e + 1 : e;
  const float t = (m - 1.0f) / (m + 1.0f);
  const float t2 = t * t;
  const float series = 1.0f + t2 * (1.0f / 3.0f + t2 * (1.0f / 5.0f + t2 * (1.0f / 7.0f + t2 * (1.0f / 9.0f))));
  const float log2x = static_cast<float>(e) + 2.0f * t * series * 1.44269504f;
  const float gl = g * log2x;
  const float y = gl > -126.0f ? gl : -126.0f;
  const int32_t n = static_cast<int32_t>(y - 0.5f);  // y <= 0: rounds to nearest (ties up)
  const float u = (y - static_cast<float>(n)) * 0.693147181f;
  const float p =
      1.0f + u * (1.0f + u * (0.5f + u * (1.0f / 6 + u * (1.0f / 24 + u * (1.0f / 120 + u * (1.0f / 720 + u * (1.0f / 5040)))))));
  const uint32_t scale_bits = static_cast<uint32_t>(n + 127) << 23;
  float scale;
  memcpy(&scale, &scale_bits, sizeof scale);
  return x < 1.17549435e-38f ? 0.0f : p * scale;
}

// The gamma curve of one value before the statistics are restored.
FASTSEG_HD float gamma_value(float x, float lo, float range, float denom, float g) {
  return pow_unit((x - lo) / denom, g) * range + lo;
}

}  // namespace fastseg
