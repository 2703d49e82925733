// CUDA launchers for resampling. The math is the one of fastseg/resample.h (read its header comment
// for what nnU-Net computes); here only the parallel decomposition:
//
//   resample_axis, one axis of a separable resample, (outer, n_in, inner) -> (outer, n_out, inner):
//     order 3  kernel 1 (pad_and_prefilter), one thread per line (o, k):
//                copies the line in[o, :, k], extended by kSplinePad edge samples on each side, to
//                coef[o, :, k] (double, as the CPU keeps its coefficients) and runs the recursive
//                B-spline prefilter on it in place;
//              kernel 2 (gather_axis), one thread per output element (o, i, k):
//                out[o, i, k] = sum of the 4 taps of coef[o, :, k] at source_coord(i).
//     order 0/1  kernel 2 alone, reading the taps from in[o, :, k] directly.
//     Adjacent threads differ in k (the innermost index), so both kernels read and write coalesced
//     whenever inner > 1; along x (inner == 1) every thread walks its own line.
//
//   resample_seg, one thread per output voxel (c, d, h, w): per spatial axis the 1 (order 0) or 2
//     (order 1) taps around source_coord, the 1..8 corner labels with the products of their axis
//     weights, the order-0 (nearest) label at the same point, then seg_vote. Taps are recomputed per
//     thread: a few flops against a gather of up to 9 labels, and no device tables to allocate.
//
// Indices are int64_t throughout; every kernel is a grid-stride loop, so any element count fits in a
// capped grid. Launch failures throw std::runtime_error with the CUDA error string.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "fastseg/resample.h"
#include "kernels.cuh"
#include "launch.cuh"

namespace fastseg::cuda {
namespace {


// --- resample_axis --------------------------------------------------------------------------------

// Kernel 1 (order 3): B-spline coefficients of every edge-padded line, in double like the CPU
// launcher's (fastseg/hd.h: same precision on both devices).
//   in   [outer, n_in, inner]  float32
//   coef [outer, N, inner]     double, N = n_in + 2 * kSplinePad
// One thread per line (o, k), lines = outer * inner.
__global__ void pad_and_prefilter(const float* __restrict__ in, double* __restrict__ coef, int64_t lines, int64_t n_in,
                                  int64_t inner) {
  const int64_t N = n_in + 2 * kSplinePad;
  for (int64_t line = grid_start(); line < lines; line += grid_stride()) {
    const int64_t o = line / inner;
    const int64_t k = line % inner;
    const float* src = in + o * n_in * inner + k;
    double* dst = coef + o * N * inner + k;
    for (int64_t p = 0; p < N; ++p) dst[p * inner] = src[padded_source_index(p, n_in) * inner];
    cubic_prefilter_lines<double>(dst, N, /*count=*/1, /*line_stride=*/0, /*sample_stride=*/inner);
  }
}

// Kernel 2: one output element per thread.
//   src [outer, n_src, inner]  the input (orders 0/1: float32, n_src = n_in) or coef (order 3:
//                              double, n_src = N)
//   out [outer, n_out, inner]  float32
template <typename S>
__global__ void gather_axis(const S* __restrict__ src, float* __restrict__ out, int64_t outer, int64_t n_src,
                            int64_t n_in, int64_t inner, int64_t n_out, double scale, int order) {
  const int64_t total = outer * n_out * inner;
  for (int64_t e = grid_start(); e < total; e += grid_stride()) {
    const int64_t k = e % inner;
    const int64_t i = (e / inner) % n_out;
    const int64_t o = e / (inner * n_out);
    int64_t idx[kMaxTaps];
    double w[kMaxTaps];
    const int taps = sample_taps(order, source_coord(i, scale), n_in, idx, w);
    out[e] = static_cast<float>(gather_taps(src + o * n_src * inner + k, inner, idx, w, taps));
  }
}

// --- resample_seg ---------------------------------------------------------------------------------

// Shapes and per-axis parameters of one segmentation resample, passed to the kernel by value.
struct SegGeometry {
  int64_t in[4];    // (C, D, H, W)
  int64_t out[4];   // (C, D', H', W')
  double scale[3];  // n_in / n_out of the spatial axes (z, y, x)
  int order[3];     // 0 or 1 per spatial axis
  SegVote mode;
};

// One output voxel per thread.
//   in  [C, D, H, W]     labels
//   out [C, D', H', W']  labels
template <typename L>
__global__ void resample_seg_kernel(const L* __restrict__ in, L* __restrict__ out, SegGeometry g, bool zero_is_label) {
  const int64_t D = g.in[1], H = g.in[2], W = g.in[3];
  const int64_t Do = g.out[1], Ho = g.out[2], Wo = g.out[3];
  const int64_t total = g.out[0] * Do * Ho * Wo;
  for (int64_t v = grid_start(); v < total; v += grid_stride()) {
    const int64_t pos[3] = {(v / (Wo * Ho)) % Do, (v / Wo) % Ho, v % Wo};  // (d, h, w)
    const int64_t c = v / (Wo * Ho * Do);
    int64_t idx[3][kMaxTaps];
    double wt[3][kMaxTaps];
    int taps[3];
    int64_t near_idx[3];  // order-0 tap per axis: the nearest-neighbour sample
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      const double coord = source_coord(pos[a], g.scale[a]);
      taps[a] = sample_taps(g.order[a], coord, g.in[a + 1], idx[a], wt[a]);
      double near_w;
      sample_taps(0, coord, g.in[a + 1], &near_idx[a], &near_w);
    }
    // Corners in the CPU launcher's order (z outer, x inner), so the vote sums the same weights in the
    // same order and ties at 0.5 resolve identically.
    const L* src = in + c * D * H * W;
    L corner[8];
    double weight[8];
    int n = 0;
    for (int a = 0; a < taps[0]; ++a)
      for (int b = 0; b < taps[1]; ++b)
        for (int e = 0; e < taps[2]; ++e) {
          corner[n] = src[(idx[0][a] * H + idx[1][b]) * W + idx[2][e]];
          weight[n] = wt[0][a] * wt[1][b] * wt[2][e];
          ++n;
        }
    const L nearest = src[(near_idx[0] * H + near_idx[1]) * W + near_idx[2]];
    out[v] = seg_vote(corner, weight, n, nearest, g.mode, zero_is_label);
  }
}

}  // namespace

void resample_axis(const float* in, float* out, double* coef, int64_t outer, int64_t n_in, int64_t inner,
                   int64_t n_out, int order, cudaStream_t stream) {
  if (outer == 0 || inner == 0 || n_out == 0) return;
  const double scale = static_cast<double>(n_in) / static_cast<double>(n_out);
  if (order == 3) {
    const int64_t lines = outer * inner;
    pad_and_prefilter<<<blocks_for(lines), kThreads, 0, stream>>>(in, coef, lines, n_in, inner);
    check_launch("pad_and_prefilter");
    gather_axis<double><<<blocks_for(outer * n_out * inner), kThreads, 0, stream>>>(
        coef, out, outer, n_in + 2 * kSplinePad, n_in, inner, n_out, scale, order);
  } else {
    gather_axis<float><<<blocks_for(outer * n_out * inner), kThreads, 0, stream>>>(in, out, outer, n_in, n_in, inner,
                                                                                   n_out, scale, order);
  }
  check_launch("gather_axis");
}

template <typename L>
void resample_seg(const L* in, L* out, const int64_t in_shape[4], const int64_t out_shape[4], const int orders[3],
                  bool strict, bool zero_is_label, cudaStream_t stream) {
  const int64_t total = out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3];
  if (total == 0) return;
  SegGeometry g{};
  for (int a = 0; a < 4; ++a) {
    g.in[a] = in_shape[a];
    g.out[a] = out_shape[a];
  }
  for (int a = 0; a < 3; ++a) {
    // The corner arrays hold 2 x 2 x 2 taps: a higher order would overrun them.
    if (orders[a] != 0 && orders[a] != 1)
      throw std::invalid_argument("segmentation orders must be 0 or 1, got " + std::to_string(orders[a]));
    g.scale[a] = static_cast<double>(in_shape[a + 1]) / static_cast<double>(out_shape[a + 1]);
    g.order[a] = orders[a];
  }
  g.mode = strict ? SegVote::kThresholdStrict : SegVote::kArgmaxNearest;
  resample_seg_kernel<L><<<blocks_for(total), kThreads, 0, stream>>>(in, out, g, zero_is_label);
  check_launch("resample_seg");
}

#define FASTSEG_INSTANTIATE_SEG(L)                                                                          \
  template void resample_seg<L>(const L*, L*, const int64_t[4], const int64_t[4], const int[3], bool, bool, \
                                cudaStream_t);
FASTSEG_INSTANTIATE_SEG(int8_t)
FASTSEG_INSTANTIATE_SEG(uint8_t)
FASTSEG_INSTANTIATE_SEG(int16_t)
FASTSEG_INSTANTIATE_SEG(uint16_t)
FASTSEG_INSTANTIATE_SEG(int32_t)
FASTSEG_INSTANTIATE_SEG(int64_t)
#undef FASTSEG_INSTANTIATE_SEG

}  // namespace fastseg::cuda
