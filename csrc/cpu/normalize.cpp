// CPU launchers for intensity normalization: one reduction pass (moments) and one fused map pass.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "fastseg/normalize.h"
#include "kernels.h"

namespace fastseg::cpu {

namespace {

// Elements per block: sums inside a block run in acc_t lanes, blocks are added up in double.
constexpr int64_t kMomentsBlock = 512;

// Sums of one block. kGate: leave non-finite values out (slower); without it they poison the block's
// sums, which the caller then recomputes gated: blocks holding NaN or Inf are rare.
template <bool kGate, bool kMasked, typename T, typename acc_t>
void moments_block(const T* x, const uint8_t* mask, int64_t i0, int64_t i1, acc_t shift, int32_t& count,
                   int32_t& bad, acc_t& s1, acc_t& s2, acc_t& lo, acc_t& hi) {
  int32_t c = 0, nb = 0;
  acc_t b1 = 0, b2 = 0, l = lo, h = hi;
#pragma omp simd reduction(+ : c, nb, b1, b2) reduction(min : l) reduction(max : h)
  for (int64_t i = i0; i < i1; ++i) {
    const acc_t v = static_cast<acc_t>(x[i]);
    const bool finite = is_finite_value(v);
    const bool counts = (!kGate || finite) && (!kMasked || mask[i] != 0);
    const acc_t d = counts ? v - shift : acc_t(0);
    nb += !finite;
    c += counts;
    b1 += d;
    b2 += d * d;
    l = counts && v < l ? v : l;
    h = counts && v > h ? v : h;
  }
  count = c;
  bad = nb;
  s1 = b1;
  s2 = b2;
  lo = l;
  hi = h;
}

// One pass in blocks: sums inside a block run in acc_t lanes, blocks are added up in double. Types
// that float32 holds exactly (float32, 8/16-bit integers) accumulate each block in float lanes (4 per
// SSE register, at most 512 terms per float sum), everything else in double.
template <typename T, bool kMasked>
Moments moments_pass(const T* x, const uint8_t* mask, int64_t n, double shift) {
  using acc_t = std::conditional_t<std::is_same_v<T, float> || (std::is_integral_v<T> && sizeof(T) <= 2), float, double>;
  const acc_t shift_a = static_cast<acc_t>(shift);
  const acc_t inf = std::numeric_limits<acc_t>::infinity();
  const int64_t blocks = (n + kMomentsBlock - 1) / kMomentsBlock;
  int64_t count = 0, nonfinite = 0;
  double s1 = 0.0, s2 = 0.0;
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
#pragma omp parallel for schedule(static) reduction(+ : count, nonfinite, s1, s2) reduction(min : lo) reduction(max : hi)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t i0 = blk * kMomentsBlock, i1 = std::min(n, i0 + kMomentsBlock);
    int32_t c, bad;
    acc_t b1, b2, l = inf, h = -inf;
    moments_block<false, kMasked>(x, mask, i0, i1, shift_a, c, bad, b1, b2, l, h);
    if (bad) {
      l = inf;
      h = -inf;
      moments_block<true, kMasked>(x, mask, i0, i1, shift_a, c, bad, b1, b2, l, h);
    }
    count += c;
    nonfinite += bad;
    s1 += b1;
    s2 += b2;
    lo = std::min(lo, static_cast<double>(l));
    hi = std::max(hi, static_cast<double>(h));
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
