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

// A block of up to kBlock lines of one axis pass. Line k (0 <= k < width), sample p of the block
// lies at base[k * line_step + p * sample_step]: along a strided axis the lines of a block are
// adjacent columns (line_step 1, sample_step inner); along the contiguous axis they are consecutive
// rows (line_step n, sample_step 1).
template <typename T>
struct LineBlock {
  T* base;
  int64_t line_step;
  int64_t sample_step;
  int64_t width;
};

// Output samples [i0, i1) of every line of the block, from `src` (a LineBlock over the input or the
// coefficient buffer). NT taps known at compile time so that the loop over lines vectorises.
template <int NT, typename S>
void interpolate_block(const LineBlock<const S>& src, const LineBlock<float>& dst, const AxisTaps& taps, int64_t i0,
                       int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t* idx = &taps.idx[i * kMaxTaps];
    const double* w = &taps.w[i * kMaxTaps];
    float* d = dst.base + i * dst.sample_step;
    if (NT == 1 && w[0] == 1.0 && src.line_step == 1 && dst.line_step == 1) {
      // Nearest neighbour: a plain row copy.
      const S* row = src.base + idx[0] * src.sample_step;
      for (int64_t k = 0; k < src.width; ++k) d[k] = static_cast<float>(row[k]);
    } else if (src.line_step == 1 && dst.line_step == 1) {
#pragma omp simd
      for (int64_t k = 0; k < src.width; ++k) d[k] = static_cast<float>(gather_taps(src.base + k, src.sample_step, idx, w, NT));
    } else {
      for (int64_t k = 0; k < src.width; ++k)
        d[k * dst.line_step] = static_cast<float>(gather_taps(src.base + k * src.line_step, src.sample_step, idx, w, NT));
    }
  }
}

template <typename S>
void interpolate(const LineBlock<const S>& src, const LineBlock<float>& dst, const AxisTaps& taps, int64_t i0, int64_t i1) {
  switch (taps.taps) {
    case 1: return interpolate_block<1>(src, dst, taps, i0, i1);
    case 2: return interpolate_block<2>(src, dst, taps, i0, i1);
    default: return interpolate_block<4>(src, dst, taps, i0, i1);
  }
}

}  // namespace

void resample_axis(const float* in, float* out, int64_t outer, int64_t n_in, int64_t inner, int64_t n_out,
                   int order) {
  if (outer == 0 || inner == 0 || n_out == 0) return;
  const AxisTaps taps = make_taps(order, n_in, n_out);
  if (order != 3) {
    // No coefficients to compute: each output row (strided axis) or line (contiguous axis) reads
    // its taps straight from the input.
    const bool contiguous = inner == 1;
    const int64_t jobs = contiguous ? outer : outer * n_out;
#pragma omp parallel for schedule(static)
    for (int64_t job = 0; job < jobs; ++job) {
      if (contiguous) {
        interpolate(LineBlock<const float>{in + job * n_in, n_in, 1, 1}, LineBlock<float>{out + job * n_out, n_out, 1, 1},
                    taps, 0, n_out);
      } else {
        const int64_t o = job / n_out, i = job % n_out;
        interpolate(LineBlock<const float>{in + o * n_in * inner, 1, inner, inner},
                    LineBlock<float>{out + o * n_out * inner, 1, inner, inner}, taps, i, i + 1);
      }
    }
    return;
  }
  // Blocks run across inner columns when the axis is strided, across outer rows when it is contiguous.
  const bool contiguous = inner == 1;
  const int64_t lines = contiguous ? outer : inner;
  const int64_t block = std::min(lines, kBlock);
  const int64_t blocks_per_plane = (lines + block - 1) / block;
  const int64_t planes = contiguous ? 1 : outer;
  const int64_t jobs = planes * blocks_per_plane;
  const int64_t N = n_in + 2 * kSplinePad;

#pragma omp parallel
  {
    // B-spline coefficients of one block: [N, block], the block's lines adjacent.
    std::vector<double> buf(N * block);
#pragma omp for schedule(static)
    for (int64_t job = 0; job < jobs; ++job) {
      const int64_t plane = job / blocks_per_plane;
      const int64_t first = (job % blocks_per_plane) * block;
      const int64_t width = std::min(block, lines - first);
      LineBlock<const float> src{nullptr, 0, 0, width};
      LineBlock<float> dst{nullptr, 0, 0, width};
      if (contiguous) {
        src = {in + first * n_in, n_in, 1, width};
        dst = {out + first * n_out, n_out, 1, width};
      } else {
        src = {in + plane * n_in * inner + first, 1, inner, width};
        dst = {out + plane * n_out * inner + first, 1, inner, width};
      }
      for (int64_t p = 0; p < N; ++p) {
        const float* row = src.base + padded_source_index(p, n_in) * src.sample_step;
        double* b = buf.data() + p * block;
        for (int64_t k = 0; k < width; ++k) b[k] = row[k * src.line_step];
      }
      cubic_prefilter_lines(buf.data(), N, width, 1, block);
      interpolate(LineBlock<const double>{buf.data(), 1, block, width}, dst, taps, 0, n_out);
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
  const float inf = std::numeric_limits<float>::infinity();
  std::fill(lo, lo + C * G, inf);
  std::fill(hi, hi + C * G, -inf);
  int64_t nonfinite = 0;
  // Min/max also pass over NaN and Inf; the caller rejects the array when any is counted, so the
  // bounds never matter then, and the row loops stay branch-free and vectorised.
#pragma omp parallel reduction(+ : nonfinite)
  {
    std::vector<float> tlo(C * G, inf), thi(C * G, -inf);
#pragma omp for schedule(static) collapse(2)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t h = 0; h < H; ++h) {
          const float* row = x + ((c * D + d) * H + h) * W;
          int64_t bad = 0;
          if (group_axis == 3) {
            float* l = tlo.data() + c * G;
            float* u = thi.data() + c * G;
#pragma omp simd reduction(+ : bad)
            for (int64_t w = 0; w < W; ++w) {
              const float v = row[w];
              bad += !is_finite_value(v);
              l[w] = v < l[w] ? v : l[w];
              u[w] = v > u[w] ? v : u[w];
            }
          } else {
            float l = inf, u = -inf;
#pragma omp simd reduction(+ : bad) reduction(min : l) reduction(max : u)
            for (int64_t w = 0; w < W; ++w) {
              const float v = row[w];
              bad += !is_finite_value(v);
              l = v < l ? v : l;
              u = v > u ? v : u;
            }
            const int64_t g = c * G + (group_axis == 1 ? d : group_axis == 2 ? h : 0);
            tlo[g] = std::min(tlo[g], l);
            thi[g] = std::max(thi[g], u);
          }
          nonfinite += bad;
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
  // Orders 0 and 1 give at most 2 taps per axis: at most 4 corner rows and 8 corners.
  const int td = taps[0].taps, th = taps[1].taps, tw = taps[2].taps;
  const SegVote mode = strict ? SegVote::kThresholdStrict : SegVote::kArgmaxNearest;
  // Raw views of the x-axis tables: the inner loop writes labels, which may be of a char type.
  const int64_t* x_idx = taps[2].idx.data();
  const double* x_w = taps[2].w.data();
  const int64_t* x_near = nearest[2].idx.data();
#pragma omp parallel
  {
    std::vector<uint8_t> uniform(W);
  #pragma omp for schedule(static) collapse(2)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t d = 0; d < Do; ++d) {
        const L* src = in + c * D * H * W;
        const int64_t* idx_d = &taps[0].idx[d * kMaxTaps];
        const double* w_d = &taps[0].w[d * kMaxTaps];
        for (int64_t h = 0; h < Ho; ++h) {
          const int64_t* idx_h = &taps[1].idx[h * kMaxTaps];
          const double* w_h = &taps[1].w[h * kMaxTaps];
          // The (z, y) corners of this output row: up to 4 input rows and their weights.
          const L* rows[4];
          double row_w[4];
          int n_rows = 0;
          for (int a = 0; a < td; ++a)
            for (int b = 0; b < th; ++b) {
              rows[n_rows] = src + (idx_d[a] * H + idx_h[b]) * W;
              row_w[n_rows++] = w_d[a] * w_h[b];
            }
          const L* near_row = src + (nearest[0].idx[d * kMaxTaps] * H + nearest[1].idx[h * kMaxTaps]) * W;
          L* drow = out + ((c * Do + d) * Ho + h) * Wo;
          if (n_rows == 1 && tw == 1) {  // nearest neighbour along every axis: a gather
            for (int64_t w = 0; w < Wo; ++w) drow[w] = rows[0][x_idx[w * kMaxTaps]];
            continue;
          }
          L corner[8];
          double weight[8];
          // uniform[x]: every corner row holds the same label at x (and at x + 1 for linear taps), so
          // an output whose x taps start at x takes that label without a vote. One vectorised pass
          // per output row; most voxels then cost a load and a store.
          for (int64_t x = 0; x < W; ++x) uniform[x] = 1;
          for (int r = 0; r < n_rows; ++r) {
            const L* row = rows[r];
            const L* first = rows[0];
            if (tw == 2) {
              for (int64_t x = 0; x + 1 < W; ++x) uniform[x] &= (row[x] == first[x]) & (row[x + 1] == first[x]);
              uniform[W - 1] &= row[W - 1] == first[W - 1];
            } else {
              for (int64_t x = 0; x < W; ++x) uniform[x] &= row[x] == first[x];
            }
          }
          for (int64_t w = 0; w < Wo; ++w) {
            const int64_t* idx_w = x_idx + w * kMaxTaps;
            const double* w_w = x_w + w * kMaxTaps;
            if (uniform[idx_w[0]]) {
              drow[w] = rows[0][idx_w[0]];
              continue;
            }
            int n = 0;
            for (int r = 0; r < n_rows && r < 4; ++r)
              for (int e = 0; e < tw && e < 2; ++e) corner[n++] = rows[r][idx_w[e]];
            n = 0;
            for (int r = 0; r < n_rows && r < 4; ++r)
              for (int e = 0; e < tw && e < 2; ++e) weight[n++] = row_w[r] * w_w[e];
            drow[w] = seg_vote(corner, weight, n, near_row[x_near[w * kMaxTaps]], mode, zero_is_label);
          }
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
