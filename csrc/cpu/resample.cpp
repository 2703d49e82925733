// CPU launchers for resampling. Parallel over lines (contiguous axis) or over blocks of adjacent
// lines (strided axes), so that every thread streams through memory in x order.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "fastseg/resample.h"
#include "kernels.h"

namespace fastseg::cpu {
namespace {

// Width of a block of adjacent lines filtered together along a strided axis.
constexpr int64_t kBlock = 64;

struct AxisTaps {
  std::vector<int64_t> idx;  // [n_out, kMaxTaps]
  std::vector<double> w;     // [n_out, kMaxTaps]
  int taps = 0;
};

AxisTaps make_taps(int order, int64_t n_in, int64_t n_out) {
  AxisTaps t;
  t.idx.assign(n_out * kMaxTaps, 0);
  t.w.assign(n_out * kMaxTaps, 0.0);
  const double scale = static_cast<double>(n_in) / static_cast<double>(n_out);
  for (int64_t i = 0; i < n_out; ++i)
    t.taps = sample_taps(order, source_coord(i, scale), n_in, &t.idx[i * kMaxTaps], &t.w[i * kMaxTaps]);
  return t;
}

}  // namespace

void resample_axis(const float* in, float* out, int64_t outer, int64_t n_in, int64_t inner, int64_t n_out,
                   int order) {
  if (outer == 0 || inner == 0 || n_out == 0) return;
  const AxisTaps taps = make_taps(order, n_in, n_out);
  const int64_t block = std::min(inner, kBlock);
  const int64_t blocks_per_plane = (inner + block - 1) / block;
  const int64_t jobs = outer * blocks_per_plane;
  const int64_t N = order == 3 ? n_in + 2 * kSplinePad : n_in;

#pragma omp parallel
  {
    // Coefficients of one block of lines: [N, block], lines adjacent.
    std::vector<double> buf(order == 3 ? N * block : 0);
    std::vector<float> acc(block);
#pragma omp for schedule(static)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t o = job / blocks_per_plane;
      const int64_t j0 = (job % blocks_per_plane) * block;
      const int64_t width = std::min(block, inner - j0);
      const float* src = in + o * n_in * inner + j0;
      float* dst = out + o * n_out * inner + j0;
      if (order == 3) {
        for (int64_t p = 0; p < N; ++p) {
          const float* row = src + padded_source_index(p, n_in) * inner;
          double* b = buf.data() + p * block;
          for (int64_t k = 0; k < width; ++k) b[k] = row[k];
        }
        cubic_prefilter_lines(buf.data(), N, width, 1, block);
        for (int64_t i = 0; i < n_out; ++i) {
          const int64_t* idx = &taps.idx[i * kMaxTaps];
          const double* w = &taps.w[i * kMaxTaps];
          float* drow = dst + i * inner;
          for (int64_t k = 0; k < width; ++k) drow[k] = static_cast<float>(gather_taps(buf.data() + k, block, idx, w, 4));
        }
      } else {
        for (int64_t i = 0; i < n_out; ++i) {
          const int64_t* idx = &taps.idx[i * kMaxTaps];
          const double* w = &taps.w[i * kMaxTaps];
          float* drow = dst + i * inner;
          for (int64_t k = 0; k < width; ++k) drow[k] = static_cast<float>(gather_taps(src + k, inner, idx, w, taps.taps));
        }
      }
    }
  }
}

namespace {

// Number of groups per channel and the group of element (d, h, w).
inline int64_t groups_per_channel(const int64_t* shape, int group_axis) { return group_axis == 0 ? 1 : shape[group_axis]; }

}  // namespace

int64_t minmax_groups(const float* x, const int64_t* shape, int group_axis, float* lo, float* hi) {
  const int64_t C = shape[0], D = shape[1], H = shape[2], W = shape[3];
  const int64_t G = groups_per_channel(shape, group_axis);
  for (int64_t g = 0; g < C * G; ++g) {
    lo[g] = std::numeric_limits<float>::infinity();
    hi[g] = -std::numeric_limits<float>::infinity();
  }
  int64_t nonfinite = 0;
#pragma omp parallel reduction(+ : nonfinite)
  {
    std::vector<float> tlo(C * G, std::numeric_limits<float>::infinity());
    std::vector<float> thi(C * G, -std::numeric_limits<float>::infinity());
#pragma omp for schedule(static) collapse(2)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t h = 0; h < H; ++h) {
          const float* row = x + ((c * D + d) * H + h) * W;
          for (int64_t w = 0; w < W; ++w) {
            const float v = row[w];
            if (!is_finite_value(v)) {
              ++nonfinite;
              continue;
            }
            const int64_t g = c * G + (group_axis == 1 ? d : group_axis == 2 ? h : group_axis == 3 ? w : 0);
            tlo[g] = std::min(tlo[g], v);
            thi[g] = std::max(thi[g], v);
          }
        }
#pragma omp critical
    for (int64_t g = 0; g < C * G; ++g) {
      lo[g] = std::min(lo[g], tlo[g]);
      hi[g] = std::max(hi[g], thi[g]);
    }
  }
  return nonfinite;
}

void clip_groups(float* x, const int64_t* shape, int group_axis, const float* lo, const float* hi) {
  const int64_t C = shape[0], D = shape[1], H = shape[2], W = shape[3];
  const int64_t G = groups_per_channel(shape, group_axis);
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t d = 0; d < D; ++d)
      for (int64_t h = 0; h < H; ++h) {
        float* row = x + ((c * D + d) * H + h) * W;
        if (group_axis == 3) {
          for (int64_t w = 0; w < W; ++w) row[w] = clamp_value(row[w], lo[c * G + w], hi[c * G + w]);
        } else {
          const int64_t g = c * G + (group_axis == 1 ? d : group_axis == 2 ? h : 0);
          const float l = lo[g], u = hi[g];
          for (int64_t w = 0; w < W; ++w) row[w] = clamp_value(row[w], l, u);
        }
      }
}

template <typename L>
bool contains_zero(const L* x, int64_t n) {
  int found = 0;
#pragma omp parallel for schedule(static) reduction(| : found)
  for (int64_t i = 0; i < n; ++i) found |= (x[i] == L(0));
  return found != 0;
}

template <typename L>
void resample_seg(const L* in, L* out, const int64_t* in_shape, const int64_t* out_shape, const int* orders,
                  bool strict) {
  const int64_t C = in_shape[0];
  AxisTaps taps[3];
  for (int a = 0; a < 3; ++a) taps[a] = make_taps(orders[a], in_shape[a + 1], out_shape[a + 1]);
  const int64_t D = in_shape[1], H = in_shape[2], W = in_shape[3];
  const int64_t Do = out_shape[1], Ho = out_shape[2], Wo = out_shape[3];
  if (C == 0 || Do == 0 || Ho == 0 || Wo == 0) return;
  const bool zero_is_label = contains_zero(in, C * D * H * W);
  AxisTaps nearest[3];
  for (int a = 0; a < 3; ++a) nearest[a] = make_taps(0, in_shape[a + 1], out_shape[a + 1]);
  const int td = taps[0].taps, th = taps[1].taps, tw = taps[2].taps;
  const SegVote mode = strict ? SegVote::kThresholdStrict : SegVote::kArgmaxNearest;
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t d = 0; d < Do; ++d) {
      const L* src = in + c * D * H * W;
      L corner[8];
      double weight[8];
      for (int64_t h = 0; h < Ho; ++h) {
        L* drow = out + ((c * Do + d) * Ho + h) * Wo;
        for (int64_t w = 0; w < Wo; ++w) {
          int n = 0;
          for (int a = 0; a < td; ++a)
            for (int b = 0; b < th; ++b)
              for (int e = 0; e < tw; ++e) {
                corner[n] = src[(taps[0].idx[d * kMaxTaps + a] * H + taps[1].idx[h * kMaxTaps + b]) * W +
                                taps[2].idx[w * kMaxTaps + e]];
                weight[n] = taps[0].w[d * kMaxTaps + a] * taps[1].w[h * kMaxTaps + b] * taps[2].w[w * kMaxTaps + e];
                ++n;
              }
          const L near = src[(nearest[0].idx[d * kMaxTaps] * H + nearest[1].idx[h * kMaxTaps]) * W +
                             nearest[2].idx[w * kMaxTaps]];
          drow[w] = seg_vote(corner, weight, n, near, mode, zero_is_label);
        }
      }
    }
}

#define FASTSEG_INSTANTIATE_SEG(L)                                                                          \
  template void resample_seg<L>(const L*, L*, const int64_t*, const int64_t*, const int*, bool); \
  template bool contains_zero<L>(const L*, int64_t);
FASTSEG_INSTANTIATE_SEG(int8_t)
FASTSEG_INSTANTIATE_SEG(uint8_t)
FASTSEG_INSTANTIATE_SEG(int16_t)
FASTSEG_INSTANTIATE_SEG(uint16_t)
FASTSEG_INSTANTIATE_SEG(int32_t)
FASTSEG_INSTANTIATE_SEG(int64_t)
#undef FASTSEG_INSTANTIATE_SEG

}  // namespace fastseg::cpu
