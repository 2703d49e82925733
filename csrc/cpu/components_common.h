// Shared parts of the CPU connected-component labellers (components_runs.h, components_blocks.h):
// the volume a labelling runs on, how it is split over threads, and the run keys.
//
// A run is a maximal stretch of one x-row whose voxels share a nonzero key. The key is what an input
// element means to the labeller: the value itself for multi-valued labelling (ValueKey: voxels
// connect when their values are equal), 1 for foreground and 0 for background for the mask keys
// (NonzeroKey for a mask; ZeroKey for its background, which hole filling labels; TableKey and
// ListKey for membership in a set of labels, which the largest-component filter labels). A key of
// 0 makes no run.
//
// Parallel decomposition: slabs of consecutive rows (or row blocks) are scanned independently and
// stitched at their seams (sequentially, so each seam costs a little); there are two per thread,
// handed out dynamically, so that a thread the OS preempts (other jobs on a 2-core machine) delays
// the others by one slab, not by its whole share. Row loops go in chunks of kRowChunk rows, also
// dynamically.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace fastseg::cpu::cc {

// A labelling problem: D planes of H rows of W voxels, C order. A 2D image is D = 1; a stack of
// slices labelled one by one is D slices with an in-plane connectivity.
struct Grid {
  int64_t D, H, W;
};

inline Grid grid_of(const int64_t shape[3]) { return Grid{shape[0], shape[1], shape[2]}; }

constexpr int kSlabsPerThread = 2;
constexpr int64_t kRowChunk = 64;

// Threads for a volume: one below 2^16 voxels, where a second thread costs more than it saves.
inline int worker_count(int64_t voxels) { return voxels < (int64_t{1} << 16) ? 1 : std::max(1, omp_get_max_threads()); }

inline int64_t slab_count(int threads, int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(threads == 1 ? 1 : int64_t{threads} * kSlabsPerThread, rows));
}

// --- run keys: how an input element becomes the key its run is made of (0 = no run) --------------

template <typename T>
struct ValueKey {  // multi-valued labelling: voxels connect when their values are equal
  using key_t = T;
  static constexpr bool kBinary = false;
  T operator()(T v) const { return v; }
};

template <typename T>
struct NonzeroKey {  // a mask: every nonzero voxel is foreground
  using key_t = uint8_t;
  static constexpr bool kBinary = true;
  uint8_t operator()(T v) const { return v != T(0); }
};

template <typename T>
struct ZeroKey {  // the background of a mask (hole filling labels it)
  using key_t = uint8_t;
  static constexpr bool kBinary = true;
  uint8_t operator()(T v) const { return v == T(0); }
};

template <typename T>
struct TableKey {  // membership in a set of labels, 8- and 16-bit inputs: a lookup table
  using key_t = uint8_t;
  static constexpr bool kBinary = true;
  const uint8_t* table;  // [2^bits]
  uint8_t operator()(T v) const { return table[v]; }
};

template <typename T>
struct ListKey {  // membership in a (short) list of labels, 32- and 64-bit inputs
  using key_t = uint8_t;
  static constexpr bool kBinary = true;
  const T* members;
  int64_t count;
  uint8_t operator()(T v) const {
    uint8_t hit = 0;
    for (int64_t i = 0; i < count; ++i) hit |= v == members[i];
    return hit;
  }
};

}  // namespace fastseg::cpu::cc
