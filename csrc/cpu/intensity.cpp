// OpenMP launcher of the intensity augmentations; the per-element formulas are in fastseg/intensity.h.
//
// One thread takes one sample at a time (dynamic schedule: a sample's cost depends on what it drew)
// and runs all its steps on its channels while they sit in the cache. Separable passes (blur, the
// low-resolution resampling, mirroring) read one buffer and write another, either the channel or a
// scratch buffer of the thread, and the result is copied back when it ends up in the scratch.
#include "intensity.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace fastseg::cpu {
namespace {

struct Stats {
  float mean, std, lo, hi;
};

// Mean, unbiased standard deviation, min and max of x[0..n) (sums in double).
Stats channel_stats(const float* x, int64_t n, bool need_std) {
  double sum = 0.0, sq = 0.0;
  float lo = x[0], hi = x[0];
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    sum += v;
    if (need_std) sq += v * v;
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  const double mean = sum / static_cast<double>(n);
  double var = 0.0;
  if (need_std && n > 1) var = std::max(0.0, (sq - sum * mean) / static_cast<double>(n - 1));
  return {static_cast<float>(mean), static_cast<float>(std::sqrt(var)), lo, hi};
}

// One axis of `src` viewed as (outer, n, inner) convolved with `taps` (odd count, centred) into dst,
// reflected borders.
void convolve_axis(const float* src, float* dst, int64_t outer, int64_t n, int64_t inner, const std::vector<float>& taps) {
  const int64_t k = static_cast<int64_t>(taps.size()), r = k / 2;
  for (int64_t o = 0; o < outer; ++o) {
    const float* in = src + o * n * inner;
    float* out = dst + o * n * inner;
    if (inner == 1) {
      for (int64_t i = 0; i < n; ++i) {
        float acc = 0.0f;
        if (i >= r && i + r < n) {
          for (int64_t t = 0; t < k; ++t) acc += taps[t] * in[i + t - r];
        } else {
          for (int64_t t = 0; t < k; ++t) acc += taps[t] * in[reflect_index(i + t - r, n)];
        }
        out[i] = acc;
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        float* row = out + i * inner;
        std::fill(row, row + inner, 0.0f);
        for (int64_t t = 0; t < k; ++t) {
          const float w = taps[t];
          const float* line = in + reflect_index(i + t - r, n) * inner;
          for (int64_t v = 0; v < inner; ++v) row[v] += w * line[v];
        }
      }
    }
  }
}

// Linear (align_corners=False) resampling of one axis: src (outer, m, inner) -> dst (outer, n, inner).
void linear_axis(const float* src, float* dst, int64_t outer, int64_t m, int64_t n, int64_t inner) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t k;
    float f;
    linear_source(i, m, n, &k, &f);
    const int64_t k1 = k < m - 1 ? k + 1 : k;
    const float w0 = 1.0f - f;
    for (int64_t o = 0; o < outer; ++o) {
      const float* a = src + (o * m + k) * inner;
      const float* b = src + (o * m + k1) * inner;
      float* out = dst + (o * n + i) * inner;
      for (int64_t v = 0; v < inner; ++v) out[v] = w0 * a[v] + f * b[v];
    }
  }
}

// Scratch of one thread: two float buffers of a channel's size and index tables.
struct Scratch {
  std::vector<float> a, b;
  std::vector<float> taps;
  std::vector<int64_t> index[3];
  std::vector<int16_t> labels;
};

void blur(float* x, const int64_t* shape, const double* sigma, Scratch& s) {
  float* src = x;
  float* dst = s.a.data();
  for (int a = 0; a < 3; ++a) {
    if (sigma[a] <= 0.0 || shape[a] < 2) continue;
    const int64_t k = blur_window(sigma[a]);
    s.taps.resize(static_cast<size_t>(k));
    double total = 0.0;
    std::vector<double> pdf(static_cast<size_t>(k));
    for (int64_t t = 0; t < k; ++t) {
      const double d = (static_cast<double>(t) - 0.5 * static_cast<double>(k - 1)) / sigma[a];
      pdf[t] = std::exp(-0.5 * d * d);
      total += pdf[t];
    }
    for (int64_t t = 0; t < k; ++t) s.taps[t] = static_cast<float>(pdf[t] / total);
    const int64_t outer = a == 0 ? 1 : (a == 1 ? shape[0] : shape[0] * shape[1]);
    const int64_t inner = a == 0 ? shape[1] * shape[2] : (a == 1 ? shape[2] : 1);
    convolve_axis(src, dst, outer, shape[a], inner, s.taps);
    float* done = dst;
    dst = (src == x) ? s.b.data() : src;
    src = done;
  }
  if (src != x) std::memcpy(x, src, sizeof(float) * shape[0] * shape[1] * shape[2]);
}

void low_resolution(float* x, const int64_t* shape, const int32_t* size, Scratch& s) {
  int64_t m[3];
  bool any = false;
  for (int a = 0; a < 3; ++a) {
    m[a] = size[a] > 0 ? size[a] : shape[a];
    any = any || m[a] != shape[a];
  }
  if (!any) return;
  for (int a = 0; a < 3; ++a) {
    s.index[a].resize(static_cast<size_t>(m[a]));
    for (int64_t j = 0; j < m[a]; ++j) s.index[a][j] = nearest_exact_source(j, shape[a], m[a]);
  }
  // down: (m0, m1, m2) into a
  float* down = s.a.data();
  for (int64_t z = 0; z < m[0]; ++z) {
    for (int64_t y = 0; y < m[1]; ++y) {
      const float* row = x + (s.index[0][z] * shape[1] + s.index[1][y]) * shape[2];
      float* out = down + (z * m[1] + y) * m[2];
      for (int64_t v = 0; v < m[2]; ++v) out[v] = row[s.index[2][v]];
    }
  }
  // up, x first (torch's nesting): (m0, m1, m2) -> (m0, m1, n2) -> (m0, n1, n2) -> (n0, n1, n2) = x
  int64_t cur[3] = {m[0], m[1], m[2]};
  float* src = down;
  for (int a = 2; a >= 0; --a) {
    if (m[a] == shape[a]) continue;
    const bool last = (a == 0) || (a == 1 && m[0] == shape[0]) ||
                      (a == 2 && m[0] == shape[0] && m[1] == shape[1]);
    float* dst = last ? x : (src == s.a.data() ? s.b.data() : s.a.data());
    const int64_t outer = a == 0 ? 1 : (a == 1 ? cur[0] : cur[0] * cur[1]);
    const int64_t inner = a == 0 ? cur[1] * cur[2] : (a == 1 ? cur[2] : 1);
    linear_axis(src, dst, outer, m[a], shape[a], inner);
    cur[a] = shape[a];
    src = dst;
  }
}

void contrast(float* x, int64_t n, float factor) {
  const Stats st = channel_stats(x, n, false);
  for (int64_t i = 0; i < n; ++i) x[i] = contrast_value(x[i], st.mean, factor, st.lo, st.hi);
}

void gamma(float* x, int64_t n, float g, bool invert) {
  if (invert) {
    for (int64_t i = 0; i < n; ++i) x[i] = -x[i];
  }
  const Stats before = channel_stats(x, n, true);
  const float range = before.hi - before.lo;
  const float denom = std::max(range, kGammaEps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = gamma_value(x[i], before.lo, range, denom, g);
  const Stats after = channel_stats(x, n, true);
  const float scale = before.std / std::max(after.std, kGammaEps);
  for (int64_t i = 0; i < n; ++i) x[i] = (x[i] - after.mean) * scale + before.mean;
  if (invert) {
    for (int64_t i = 0; i < n; ++i) x[i] = -x[i];
  }
}

// x (D, H, W) flipped along the axes set in `axes` (bit a: axis a), through `buffer`.
template <typename T>
void mirror(T* x, const int64_t* shape, int axes, T* buffer) {
  const int64_t D = shape[0], H = shape[1], W = shape[2];
  const bool fz = axes & 1, fy = axes & 2, fx = axes & 4;
  for (int64_t z = 0; z < D; ++z) {
    for (int64_t y = 0; y < H; ++y) {
      const T* src = x + ((fz ? D - 1 - z : z) * H + (fy ? H - 1 - y : y)) * W;
      T* dst = buffer + (z * H + y) * W;
      if (fx) {
        for (int64_t v = 0; v < W; ++v) dst[v] = src[W - 1 - v];
      } else {
        std::memcpy(dst, src, sizeof(T) * W);
      }
    }
  }
  std::memcpy(x, buffer, sizeof(T) * D * H * W);
}

}  // namespace

void augment_intensity(float* data, int16_t* seg, const IntensityBatch& p) {
  const int64_t voxels = p.shape[0] * p.shape[1] * p.shape[2];
  const int64_t B = p.batch, C = p.channels;
  if (B == 0 || C == 0 || voxels == 0) return;

#pragma omp parallel
  {
    Scratch s;
    s.a.resize(static_cast<size_t>(voxels));
    s.b.resize(static_cast<size_t>(voxels));
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < B; ++b) {
      const int32_t flags = p.flags[b];
      for (int64_t c = 0; c < C; ++c) {
        const int64_t bc = b * C + c;
        float* x = data + bc * voxels;
        blur(x, p.shape, p.blur_sigma + bc * 3, s);
        const float factor = p.brightness[bc];
        if (factor != 1.0f) {
          for (int64_t i = 0; i < voxels; ++i) x[i] *= factor;
        }
        if (flags & kContrast) contrast(x, voxels, p.contrast[bc]);
        low_resolution(x, p.shape, p.lowres_size + bc * 3, s);
        if (flags & kGammaInverted) gamma(x, voxels, p.gamma[bc * 2], true);
        if (flags & kGamma) gamma(x, voxels, p.gamma[bc * 2 + 1], false);
      }
      int16_t* labels = seg + b * voxels;
      const int axes = (flags >> kMirrorShift) & 7;
      if (axes != 0) {
        for (int64_t c = 0; c < C; ++c) mirror(data + (b * C + c) * voxels, p.shape, axes, s.a.data());
        s.labels.resize(static_cast<size_t>(voxels));
        mirror(labels, p.shape, axes, s.labels.data());
      }
      for (int64_t c = 0; c < C; ++c) {
        if (p.mask[c] == 0) continue;
        float* x = data + (b * C + c) * voxels;
        for (int64_t i = 0; i < voxels; ++i) x[i] = labels[i] < 0 ? 0.0f : x[i];
      }
      for (int64_t i = 0; i < voxels; ++i) labels[i] = labels[i] == p.outside ? p.replacement : labels[i];
    }
  }
}

}  // namespace fastseg::cpu
