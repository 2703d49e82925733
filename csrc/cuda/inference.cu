// CUDA launchers for inference. The math is the one of fastseg/inference.h (read its header comment
// for what nnU-Net computes); here only the parallel decomposition:
//
//   accumulate_tiles, one thread per (channel or weight map, tile, tile voxel):
//     acc[c, o_b + t] += tiles[b, c, t] * g[t]   and   weights[o_b + t] += g[t]   by atomicAdd.
//     Overlapping tiles of one batch add into the same voxels; float atomics lose no update (the
//     order of the adds, and so the last bit of a sum, may vary). Adjacent threads take adjacent x,
//     so tile loads are coalesced and the atomics of a warp hit one or two cache lines.
//
//   export_segmentation, one thread per output voxel (d, h, w): the taps of each axis from
//     sample_taps (recomputed per thread, like resample_seg), then per class the nested tap sums in
//     the CPU launcher's order (z innermost, then y, then x; combine_taps), so both produce the same
//     float32 value per class and voxel; the running argmax or region label; with probabilities,
//     the class values go to probabilities[c, voxel] and are turned into a softmax (or sigmoids) in
//     place by the same thread. Adjacent threads take adjacent w: the label and probability stores
//     are coalesced, and the logit gathers of a warp share a few input rows.
//
// Indices are int64_t; every kernel is a grid-stride loop. Launch failures throw std::runtime_error.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "fastseg/inference.h"
#include "fastseg/resample.h"
#include "kernels.cuh"
#include "launch.cuh"

namespace fastseg::cuda {
namespace {


// Shapes of one accumulation, by value.
struct TileGeometry {
  int64_t image[4];  // (C, D, H, W)
  int64_t tile[5];   // (B, C, d, h, w)
};

//   acc       [C, D, H, W]
//   weights   [D, H, W] or null
//   tiles     [B, C, d, h, w]
//   offsets   [B, 3]
//   importance [d, h, w] or null
// Element e enumerates (b, channel, t), channel C being the weight map.
template <typename T>
__global__ void accumulate_kernel(float* __restrict__ acc, float* __restrict__ weights, const T* __restrict__ tiles,
                                  const int64_t* __restrict__ offsets, const float* __restrict__ importance,
                                  TileGeometry g) {
  const int64_t C = g.image[0], D = g.image[1], H = g.image[2], W = g.image[3];
  const int64_t td = g.tile[2], th = g.tile[3], tw = g.tile[4];
  const int64_t tile_voxels = td * th * tw;
  const int64_t channels = C + (weights != nullptr ? 1 : 0);
  const int64_t total = g.tile[0] * channels * tile_voxels;
  for (int64_t e = grid_start(); e < total; e += grid_stride()) {
    const int64_t t = e % tile_voxels;
    const int64_t c = (e / tile_voxels) % channels;
    const int64_t b = e / (tile_voxels * channels);
    const int64_t* o = offsets + b * 3;
    const int64_t voxel = ((o[0] + t / (th * tw)) * H + (o[1] + (t / tw) % th)) * W + (o[2] + t % tw);
    const float w = importance != nullptr ? importance[t] : 1.0f;
    if (c < C)
      atomicAdd(acc + c * D * H * W + voxel, weighted_logit(tiles[(b * C + c) * tile_voxels + t], w));
    else
      atomicAdd(weights + voxel, w);
  }
}

// Shapes and per-axis parameters of one export, by value.
struct ExportGeometry {
  int64_t in[4];    // (C, D, H, W)
  int64_t out[3];   // (D', H', W')
  double scale[3];  // n_in / n_out per spatial axis
  int order[3];     // 0 or 1
  ExportMode mode;
};

// One output voxel per thread.
//   logits        [C, D, H, W]
//   weights       [D, H, W] or null
//   region_labels [C] (kRegions)
//   labels        [D', H', W']
//   probabilities [C, D', H', W'] or null
template <typename T, typename L>
__global__ void export_kernel(const T* __restrict__ logits, const float* __restrict__ weights,
                              const int32_t* __restrict__ region_labels, L* __restrict__ labels,
                              float* __restrict__ probabilities, ExportGeometry g) {
  const int64_t C = g.in[0], D = g.in[1], H = g.in[2], W = g.in[3];
  const int64_t Do = g.out[0], Ho = g.out[1], Wo = g.out[2];
  const int64_t total = Do * Ho * Wo;
  for (int64_t v = grid_start(); v < total; v += grid_stride()) {
    const int64_t pos[3] = {v / (Ho * Wo), (v / Wo) % Ho, v % Wo};
    int64_t idx[3][kMaxTaps];
    float w[3][kMaxTaps];
    int taps[3];
#pragma unroll
    for (int a = 0; a < 3; ++a) {
      double wd[kMaxTaps];
      taps[a] = sample_taps(g.order[a], source_coord(pos[a], g.scale[a]), g.in[a + 1], idx[a], wd);
      for (int k = 0; k < taps[a]; ++k) w[a][k] = static_cast<float>(wd[k]);
    }
    float best = 0.0f;
    int32_t label = 0;
    for (int64_t c = 0; c < C; ++c) {
      const T* src = logits + c * D * H * W;
      float x_terms[kMaxTaps];
      for (int e = 0; e < taps[2]; ++e) {
        float y_terms[kMaxTaps];
        for (int b = 0; b < taps[1]; ++b) {
          float z_terms[kMaxTaps];
          for (int a = 0; a < taps[0]; ++a) {
            const int64_t at = (idx[0][a] * H + idx[1][b]) * W + idx[2][e];
            z_terms[a] = weights != nullptr ? normalized_logit(src[at], weights[at]) : to_float(src[at]);
          }
          y_terms[b] = combine_taps(z_terms, w[0], taps[0]);
        }
        x_terms[e] = combine_taps(y_terms, w[1], taps[1]);
      }
      const float value = combine_taps(x_terms, w[2], taps[2]);
      if (g.mode == ExportMode::kArgmax)
        argmax_update(value, static_cast<int32_t>(c), best, label);
      else
        label = region_update(value, region_labels[c], label);
      if (probabilities != nullptr) probabilities[c * total + v] = value;
    }
    if (probabilities != nullptr) {
      if (g.mode == ExportMode::kArgmax)
        softmax_strided(probabilities + v, C, total);
      else
        for (int64_t c = 0; c < C; ++c) probabilities[c * total + v] = sigmoid(probabilities[c * total + v]);
    }
    labels[v] = static_cast<L>(label);
  }
}

}  // namespace

template <typename T>
void accumulate_tiles(float* acc, float* weights, const T* tiles, const int64_t* host_offsets, int64_t* device_offsets,
                      const float* importance, const int64_t image[4], const int64_t tile[5], cudaStream_t stream) {
  TileGeometry g{};
  for (int a = 0; a < 4; ++a) g.image[a] = image[a];
  for (int a = 0; a < 5; ++a) g.tile[a] = tile[a];
  const int64_t total = tile[0] * (image[0] + (weights != nullptr ? 1 : 0)) * tile[2] * tile[3] * tile[4];
  if (total == 0) return;
  // From pageable host memory, cudaMemcpyAsync returns once the values are staged, so the caller
  // may free host_offsets at once; the copy is ordered before the kernel on the stream.
  const cudaError_t err = cudaMemcpyAsync(device_offsets, host_offsets, tile[0] * 3 * sizeof(int64_t),
                                          cudaMemcpyHostToDevice, stream);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fastseg: copying the tile offsets to the device failed: ") +
                             cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  accumulate_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(acc, weights, tiles, device_offsets, importance, g);
  check_launch("accumulate_tiles");
}

template <typename T, typename L>
void export_segmentation(const T* logits, const float* weights, const int64_t in_shape[4], const int64_t out_shape[3],
                         const int orders[3], ExportMode mode, const int32_t* region_labels, L* labels,
                         float* probabilities, cudaStream_t stream) {
  const int64_t total = out_shape[0] * out_shape[1] * out_shape[2];
  if (total == 0 || in_shape[0] == 0) return;
  ExportGeometry g{};
  for (int a = 0; a < 4; ++a) g.in[a] = in_shape[a];
  for (int a = 0; a < 3; ++a) {
    // The tap arrays hold kMaxTaps entries; the export interpolates with order 0 or 1 only.
    if (orders[a] != 0 && orders[a] != 1)
      throw std::invalid_argument("export orders must be 0 or 1, got " + std::to_string(orders[a]));
    g.out[a] = out_shape[a];
    g.scale[a] = static_cast<double>(in_shape[a + 1]) / static_cast<double>(out_shape[a]);
    g.order[a] = orders[a];
  }
  g.mode = mode;
  export_kernel<T, L><<<blocks_for(total), kThreads, 0, stream>>>(logits, weights, region_labels, labels,
                                                                   probabilities, g);
  check_launch("export_segmentation");
}

#define FASTSEG_INSTANTIATE_ACC(T)                                                                        \
  template void accumulate_tiles<T>(float*, float*, const T*, const int64_t*, int64_t*, const float*,     \
                                    const int64_t[4], const int64_t[5], cudaStream_t);
FASTSEG_INSTANTIATE_ACC(float)
FASTSEG_INSTANTIATE_ACC(Half)
FASTSEG_INSTANTIATE_ACC(BFloat16)
#undef FASTSEG_INSTANTIATE_ACC

#define FASTSEG_INSTANTIATE_EXPORT(T, L)                                                                          \
  template void export_segmentation<T, L>(const T*, const float*, const int64_t[4], const int64_t[3], const int[3], \
                                          ExportMode, const int32_t*, L*, float*, cudaStream_t);
FASTSEG_INSTANTIATE_EXPORT(float, uint8_t)
FASTSEG_INSTANTIATE_EXPORT(float, uint16_t)
FASTSEG_INSTANTIATE_EXPORT(Half, uint8_t)
FASTSEG_INSTANTIATE_EXPORT(Half, uint16_t)
FASTSEG_INSTANTIATE_EXPORT(BFloat16, uint8_t)
FASTSEG_INSTANTIATE_EXPORT(BFloat16, uint16_t)
#undef FASTSEG_INSTANTIATE_EXPORT

}  // namespace fastseg::cuda
