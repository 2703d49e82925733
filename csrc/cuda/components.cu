// CUDA connected-component labelling: block-based union-find ("BUF", after Allegretti, Bolelli and
// Grana, and Playne and Hawick), on the find/merge bodies of fastseg/components.h.
//
// labels [D, H, W] holds, per voxel, a union-find parent given as a linear voxel index (kNoLabel for
// background). Links always point to the smaller index, so a tree's root is its first voxel in
// raster order, the same root the CPU labeller's runs lead to.
//
//   1. local_merge, one thread block per tile of kTileZ x kTileY x kTileX voxels: parents in shared
//      memory (tile-local indices), every voxel merged with its backward stencil neighbours inside
//      the tile (atomicMin links, merge() retrying when it loses a race); after a barrier each voxel
//      writes the global index of its tile-local root. Tile-local order is raster order restricted
//      to the tile, so that root is also the component-in-tile's first voxel.
//   2. boundary_merge, one thread per voxel: merges voxels with their backward neighbours in other
//      tiles, on the global parents (atomicMin on global memory).
//   3. compress: every voxel's parent becomes its root (read-only finds: all links are done).
//   4. mark_roots / relabel: the caller turns roots into labels 1..n in raster order, by a prefix sum
//      of the root flags (torch.cumsum) between these two kernels.
//
// Voxels connect when their keys are equal and nonzero: the value itself, or (binary) value != 0.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastseg/components.h"
#include "kernels.cuh"
#include "launch.cuh"

namespace fastseg::cuda {
namespace {

constexpr int kTileX = 32, kTileY = 4, kTileZ = 4;  // 512 threads, one voxel each
constexpr int kTile = kTileX * kTileY * kTileZ;

// atomicMin link for merge(): shared or global memory (generic addressing), returns the old parent.
struct AtomicLink {
  __device__ cc_index_t operator()(cc_index_t* slot, cc_index_t to) const { return atomicMin(slot, to); }
};

// Key of a voxel: 0 for background; the value for multi-valued labelling, 1 for a mask.
template <typename T>
__device__ __forceinline__ T key_of(T v, bool binary) {
  return binary ? T(v != T(0)) : v;
}

struct Geometry {
  int64_t D, H, W;
  int hops;
  bool volumetric;
};

// 1. Tile-local union-find.
//   in     [D, H, W] values
//   labels [D, H, W] out: global index of the tile-local root, kNoLabel for background
template <typename T>
__global__ void local_merge(const T* __restrict__ in, cc_index_t* __restrict__ labels, Geometry g, bool binary) {
  __shared__ cc_index_t parent[kTile];
  __shared__ T key[kTile];
  const int tx = threadIdx.x, ty = threadIdx.y, tz = threadIdx.z;
  const int l = (tz * kTileY + ty) * kTileX + tx;
  const int64_t x = static_cast<int64_t>(blockIdx.x) * kTileX + tx;
  const int64_t y = static_cast<int64_t>(blockIdx.y) * kTileY + ty;
  const int64_t z = static_cast<int64_t>(blockIdx.z) * kTileZ + tz;
  const bool inside = x < g.W && y < g.H && z < g.D;
  const int64_t v = (z * g.H + y) * g.W + x;
  const T k = inside ? key_of(in[v], binary) : T(0);
  key[l] = k;
  parent[l] = k != T(0) ? static_cast<cc_index_t>(l) : kNoLabel;
  __syncthreads();
  if (k != T(0)) {
    for (int s = 0; s < kMaxBackward; ++s) {
      if (!in_stencil(s, g.hops, g.volumetric)) continue;
      const Offset o = backward_offset(s);
      const int nx = tx + o.dx, ny = ty + o.dy, nz = tz + o.dz;
      if (nx < 0 || ny < 0 || nz < 0 || nx >= kTileX || ny >= kTileY) continue;  // another tile: boundary_merge
      const int nl = (nz * kTileY + ny) * kTileX + nx;
      if (key[nl] == k) merge<false>(parent, static_cast<cc_index_t>(l), static_cast<cc_index_t>(nl), AtomicLink{});
    }
  }
  __syncthreads();
  if (!inside) return;
  if (k == T(0)) {
    labels[v] = kNoLabel;
    return;
  }
  const cc_index_t r = find_root(parent, static_cast<cc_index_t>(l));
  const int64_t rx = static_cast<int64_t>(blockIdx.x) * kTileX + r % kTileX;
  const int64_t ry = static_cast<int64_t>(blockIdx.y) * kTileY + (r / kTileX) % kTileY;
  const int64_t rz = static_cast<int64_t>(blockIdx.z) * kTileZ + r / (kTileX * kTileY);
  labels[v] = static_cast<cc_index_t>((rz * g.H + ry) * g.W + rx);
}

// 2. Merges across tile faces. One thread per voxel (grid-stride).
template <typename T>
__global__ void boundary_merge(const T* __restrict__ in, cc_index_t* labels, Geometry g, bool binary) {
  const int64_t total = g.D * g.H * g.W;
  for (int64_t v = grid_start(); v < total; v += grid_stride()) {
    const int64_t x = v % g.W, y = (v / g.W) % g.H, z = v / (g.W * g.H);
    // Only voxels on a tile face have stencil neighbours in another tile (the stencil reaches x - 1,
    // x + 1, y - 1, y + 1 and z - 1).
    const int64_t tx = x % kTileX, ty = y % kTileY, tz = z % kTileZ;
    if (tx != 0 && tx != kTileX - 1 && ty != 0 && ty != kTileY - 1 && tz != 0) continue;
    const T k = key_of(in[v], binary);
    if (k == T(0)) continue;
    for (int s = 0; s < kMaxBackward; ++s) {
      if (!in_stencil(s, g.hops, g.volumetric)) continue;
      const Offset o = backward_offset(s);
      const int64_t nx = x + o.dx, ny = y + o.dy, nz = z + o.dz;
      if (nx < 0 || ny < 0 || nz < 0 || nx >= g.W || ny >= g.H) continue;
      if (nx / kTileX == x / kTileX && ny / kTileY == y / kTileY && nz / kTileZ == z / kTileZ) continue;  // local_merge's
      const int64_t n = (nz * g.H + ny) * g.W + nx;
      if (key_of(in[n], binary) == k) merge<false>(labels, static_cast<cc_index_t>(v), static_cast<cc_index_t>(n), AtomicLink{});
    }
  }
}

// 3. Every foreground voxel points at its root.
__global__ void compress(cc_index_t* labels, int64_t total) {
  for (int64_t v = grid_start(); v < total; v += grid_stride()) {
    const cc_index_t p = labels[v];
    if (p != kNoLabel && p != static_cast<cc_index_t>(v)) labels[v] = find_root(labels, p);
  }
}

// 4a. flags[v] = 1 where v is a root (its own parent), else 0.
__global__ void mark_roots_kernel(const cc_index_t* __restrict__ labels, int32_t* __restrict__ flags, int64_t total) {
  for (int64_t v = grid_start(); v < total; v += grid_stride())
    flags[v] = labels[v] == static_cast<cc_index_t>(v) ? 1 : 0;
}

// 4b. labels[v] = rank[root of v] (the inclusive prefix sum of the root flags), 0 for background.
__global__ void relabel_kernel(cc_index_t* labels, const int32_t* __restrict__ rank, int64_t total) {
  for (int64_t v = grid_start(); v < total; v += grid_stride()) {
    const cc_index_t p = labels[v];
    labels[v] = p == kNoLabel ? 0 : static_cast<cc_index_t>(rank[p]);
  }
}

}  // namespace

template <typename T>
void label_components(const T* in, cc_index_t* labels, const int64_t shape[3], int connectivity, bool binary,
                      cudaStream_t stream) {
  Geometry g{shape[0], shape[1], shape[2], 0, true};
  if (!connectivity_rule(connectivity, &g.hops, &g.volumetric))
    throw std::invalid_argument("connectivity must be 26, 18 or 6 (3D) or 8 or 4 (in-plane), got " +
                                std::to_string(connectivity));
  const int64_t total = g.D * g.H * g.W;
  if (total == 0) return;
  const int64_t tiles_y = (g.H + kTileY - 1) / kTileY, tiles_z = (g.D + kTileZ - 1) / kTileZ;
  if (tiles_y > 65535 || tiles_z > 65535)
    throw std::invalid_argument("volume too tall for the tile grid: D and H must be at most " +
                                std::to_string(65535 * kTileZ) + " and " + std::to_string(65535 * kTileY));
  const dim3 tiles(static_cast<unsigned int>((g.W + kTileX - 1) / kTileX), static_cast<unsigned int>(tiles_y),
                   static_cast<unsigned int>(tiles_z));
  local_merge<T><<<tiles, dim3(kTileX, kTileY, kTileZ), 0, stream>>>(in, labels, g, binary);
  check_launch("local_merge");
  boundary_merge<T><<<blocks_for(total), kThreads, 0, stream>>>(in, labels, g, binary);
  check_launch("boundary_merge");
  compress<<<blocks_for(total), kThreads, 0, stream>>>(labels, total);
  check_launch("compress");
}

void mark_roots(const cc_index_t* labels, int32_t* flags, int64_t total, cudaStream_t stream) {
  if (total == 0) return;
  mark_roots_kernel<<<blocks_for(total), kThreads, 0, stream>>>(labels, flags, total);
  check_launch("mark_roots");
}

void relabel(cc_index_t* labels, const int32_t* rank, int64_t total, cudaStream_t stream) {
  if (total == 0) return;
  relabel_kernel<<<blocks_for(total), kThreads, 0, stream>>>(labels, rank, total);
  check_launch("relabel");
}

#define FASTSEG_INSTANTIATE_CC(T) \
  template void label_components<T>(const T*, cc_index_t*, const int64_t[3], int, bool, cudaStream_t);
FASTSEG_INSTANTIATE_CC(uint8_t)
FASTSEG_INSTANTIATE_CC(uint16_t)
FASTSEG_INSTANTIATE_CC(uint32_t)
FASTSEG_INSTANTIATE_CC(uint64_t)
#undef FASTSEG_INSTANTIATE_CC

}  // namespace fastseg::cuda
