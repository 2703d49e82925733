// CPU launchers for intensity normalization: one reduction pass (moments) and one fused map pass.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "fastseg/normalize.h"
#include "kernels.h"

namespace fastseg::cpu {

namespace {

// One branch-free pass: every element contributes, weighted by whether it counts (finite, and inside
// the mask when there is one), so that the loop vectorises.
template <typename T, bool kMasked>
Moments moments_pass(const T* x, const uint8_t* mask, int64_t n, double shift) {
  int64_t count = 0, nonfinite = 0;
  double s1 = 0.0, s2 = 0.0;
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
#pragma omp parallel for simd schedule(static) reduction(+ : count, nonfinite, s1, s2) reduction(min : lo) \
    reduction(max : hi)
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    const bool finite = is_finite_value(v);
    const bool counts = finite && (!kMasked || mask[i] != 0);
    const double d = counts ? v - shift : 0.0;
    nonfinite += !finite;
    count += counts;
    s1 += d;
    s2 += d * d;
    lo = counts && v < lo ? v : lo;
    hi = counts && v > hi ? v : hi;
  }
  Moments m;
  m.count = count;
  m.nonfinite = nonfinite;
  if (count > 0) {
    const double mean_d = s1 / static_cast<double>(count);
    m.mean = shift + mean_d;
    m.std = std::sqrt(std::max(0.0, s2 / static_cast<double>(count) - mean_d * mean_d));
    m.min = lo;
    m.max = hi;
  }
  return m;
}

}  // namespace

template <typename T>
Moments moments(const T* x, const uint8_t* mask, int64_t n) {
  // Sums are taken around a shift (the first counted value) so that the sum of squares minus the
  // squared sum does not cancel for data far from zero.
  double shift = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(x[i]);
    if ((!mask || mask[i]) && is_finite_value(v)) {
      shift = v;
      break;
    }
  }
  return mask ? moments_pass<T, true>(x, mask, n, shift) : moments_pass<T, false>(x, mask, n, shift);
}

template <typename T>
int64_t normalize_apply(const T* x, float* out, const uint8_t* mask, int64_t n, AffineParams p) {
  int64_t nonfinite = 0;
  if (mask) {
#pragma omp parallel for schedule(static) reduction(+ : nonfinite)
    for (int64_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(x[i]);
      nonfinite += !is_finite_value(v);
      out[i] = mask[i] ? normalize_value(v, p) : v;
    }
  } else {
#pragma omp parallel for schedule(static) reduction(+ : nonfinite)
    for (int64_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(x[i]);
      nonfinite += !is_finite_value(v);
      out[i] = normalize_value(v, p);
    }
  }
  return nonfinite;
}

#define FASTSEG_INSTANTIATE_NORM(T)                                  \
  template Moments moments<T>(const T*, const uint8_t*, int64_t); \
  template int64_t normalize_apply<T>(const T*, float*, const uint8_t*, int64_t, AffineParams);
FASTSEG_INSTANTIATE_NORM(float)
FASTSEG_INSTANTIATE_NORM(double)
FASTSEG_INSTANTIATE_NORM(int8_t)
FASTSEG_INSTANTIATE_NORM(uint8_t)
FASTSEG_INSTANTIATE_NORM(int16_t)
FASTSEG_INSTANTIATE_NORM(uint16_t)
FASTSEG_INSTANTIATE_NORM(int32_t)
FASTSEG_INSTANTIATE_NORM(uint32_t)
FASTSEG_INSTANTIATE_NORM(int64_t)
#undef FASTSEG_INSTANTIATE_NORM

}  // namespace fastseg::cpu
