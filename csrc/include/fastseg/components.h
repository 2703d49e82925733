// Connected-component labelling: the neighbourhood stencils and the union-find bodies that the CPU
// (run-based, OpenMP) and the CUDA (block-based, "BUF") labellers share.
//
// What is computed. Two voxels are connected when they carry the same nonzero input value and are
// neighbours under the chosen connectivity; a component is a class of the transitive closure. Value
// 0 is background and belongs to no component. Components are numbered 1..n in raster order
// (z, y, x, x fastest) of their first voxel, so the labelling is a function of the input alone.
//
// The stencils. Offsets (dz, dy, dx) of the neighbours that come *before* a voxel in raster order:
// a labeller that links every voxel to those neighbours links every neighbouring pair exactly once.
// A connectivity keeps the offsets with at most `hops` nonzero entries; 2D connectivities (and the
// per-slice labelling of a 3D stack) keep those with dz = 0.
//
//        z-1 plane            z plane (current row y, current voxel X)
//      +----+----+----+     +----+----+----+
//  y-1 | 3  | 2  | 3  |     | 2  | 1  | 2  |    numbers: hops, the count of nonzero offsets;
//      +----+----+----+     +----+----+----+    a connectivity of 6 / 18 / 26 keeps hops <= 1 / 2 / 3,
//  y   | 2  | 1  | 2  |     | 1  | X  |    |    4 / 8 (dz = 0 only) keeps hops <= 1 / 2.
//      +----+----+----+     +----+----+----+
//  y+1 | 3  | 2  | 3  |     |    |    |    |
//      +----+----+----+     +----+----+----+
//
// Union-find. parent[i] == i marks a root; a link always points from the larger index to the
// smaller, so every tree's root is its smallest index, and since indices follow raster order, a
// component's root is its first voxel (CUDA) or first run (CPU). Renumbering roots in index order
// therefore gives raster-order labels on both devices (the CPU's row-block variant, whose blocks are
// not in raster order, ranks each component's first voxel instead; csrc/cpu/components_rank.cpp).
//
// merge() is written once against a `Link` policy: SerialLink (the CPU's run labeller, one writer
// per tree) stores the new parent; the CUDA launcher passes an atomicMin-based link, and merge() then
// retries when another thread re-linked the root it was about to link (the lock-free union of
// Playne & Hawick and of Allegretti et al.'s BUF). unite_splicing() is the single-writer union of the
// CPU's row-block labeller, whose calls mostly find the two nodes already joined.
#pragma once

#include <cstdint>

#include "fastseg/hd.h"

namespace fastseg {

// Index type of union-find nodes (runs on the CPU, voxels on the GPU) and of output labels.
using cc_index_t = uint32_t;

// Marks a background voxel in the CUDA label buffer.
constexpr cc_index_t kNoLabel = 0xFFFFFFFFu;

// The 13 offsets (dz, dy, dx) that precede a voxel in raster order, numbered k = 0..12: k = 0 is
// (0, 0, -1), the previous voxel of the row; k = 1..3 the row above, (0, -1, k - 2); k = 4..12 the
// plane before, (-1, (k - 4) / 3 - 1, (k - 4) % 3 - 1). Computed rather than tabulated, so that device
// code needs no constant table. Within each earlier row, k, k + 1, k + 2 run over dx = -1, 0, 1.
constexpr int kMaxBackward = 13;

struct Offset {
  int dz, dy, dx;
};

FASTSEG_HD Offset backward_offset(int k) {
  if (k == 0) return {0, 0, -1};
  if (k <= 3) return {0, -1, k - 2};
  return {-1, (k - 4) / 3 - 1, (k - 4) % 3 - 1};
}

// How many nonzero offsets a neighbour may have and whether the plane before counts, per
// connectivity (26, 18, 6: 3D; 8, 4: in-plane). Returns false for any other value.
FASTSEG_HD bool connectivity_rule(int connectivity, int* hops, bool* volumetric) {
  switch (connectivity) {
    case 26: *hops = 3; *volumetric = true; return true;
    case 18: *hops = 2; *volumetric = true; return true;
    case 6: *hops = 1; *volumetric = true; return true;
    case 8: *hops = 2; *volumetric = false; return true;
    case 4: *hops = 1; *volumetric = false; return true;
    default: return false;
  }
}

// Whether backward offset k belongs to the stencil of (hops, volumetric).
FASTSEG_HD bool in_stencil(int k, int hops, bool volumetric) {
  const Offset o = backward_offset(k);
  if (!volumetric && o.dz != 0) return false;
  return (o.dz != 0) + (o.dy != 0) + (o.dx != 0) <= hops;
}

// Root of i, read-only (safe while other threads link roots: it only ever sees valid ancestors).
FASTSEG_HD cc_index_t find_root(const cc_index_t* parent, cc_index_t i) {
  cc_index_t p = parent[i];
  while (p != i) {
    i = p;
    p = parent[i];
  }
  return i;
}

// Root of i with path halving: every node on the way is re-pointed to its grandparent. One writer
// per tree only (the CPU labeller, or a GPU pass that runs after all links are done).
FASTSEG_HD cc_index_t find_root_halving(cc_index_t* parent, cc_index_t i) {
  while (parent[i] != i) {
    const cc_index_t grand = parent[parent[i]];
    parent[i] = grand;
    i = grand;
  }
  return i;
}

// Link policy for a single writer: parent[root] = to (to < root), returns the old parent (root).
struct SerialLink {
  FASTSEG_HD cc_index_t operator()(cc_index_t* slot, cc_index_t to) const {
    const cc_index_t old = *slot;
    if (to < old) *slot = to;
    return old;
  }
};

// Unites the trees of a and b: the larger root is linked under the smaller. `link(slot, to)` must
// set *slot = min(*slot, to) and return the previous *slot (atomically where threads race). When the
// previous value is not the root itself, another thread linked that root first: retry from there.
// kCompress halves the paths it walks (single writer only). Returns the root of the union.
template <bool kCompress, typename Link>
FASTSEG_HD cc_index_t merge(cc_index_t* parent, cc_index_t a, cc_index_t b, Link link) {
  for (;;) {
    a = kCompress ? find_root_halving(parent, a) : find_root(parent, a);
    b = kCompress ? find_root_halving(parent, b) : find_root(parent, b);
    if (a == b) return a;
    if (a > b) {
      const cc_index_t t = a;
      a = b;
      b = t;
    }
    const cc_index_t old = link(parent + b, a);
    if (old == b) return a;
    b = old;  // lost a race: b was re-linked meanwhile; its new parent continues the search
  }
}

// Unites the trees of a and b for a single writer: Rem's algorithm with splicing. The two paths are
// climbed together, always from the node whose parent is larger, and each node passed is re-pointed
// to the other path's (smaller) parent. It stops as soon as the paths share a parent, which for two
// nodes already in one tree (most calls of a labeller) is usually well below the root, or links the
// root it reaches under the other side's parent. Parents only ever decrease, so parent[i] <= i stays
// true and a tree's root stays its smallest index, as with merge().
//
// The first step is written without branches: in a labeller nearly every call ends there (the two
// nodes already share a parent, or one of them is a root and is linked), and a branch on which case
// it is would be mispredicted about every other call.
FASTSEG_HD void unite_splicing(cc_index_t* parent, cc_index_t a, cc_index_t b) {
  cc_index_t pa = parent[a], pb = parent[b];
  {
    const bool climb_b = pa < pb;
    const cc_index_t node = climb_b ? b : a, up = climb_b ? pb : pa, to = climb_b ? pa : pb;
    parent[node] = to;  // with pa == pb: rewrites parent[a] with its own value
    if ((up == node) | (pa == pb)) return;
    if (climb_b) {
      b = pb;
      pb = parent[b];
    } else {
      a = pa;
      pa = parent[a];
    }
  }
  while (pa != pb) {
    if (pa < pb) {  // climb from b
      parent[b] = pa;
      if (pb == b) return;  // b was a root: now linked under pa
      b = pb;
      pb = parent[b];
    } else {  // climb from a
      parent[a] = pb;
      if (pa == a) return;
      a = pa;
      pa = parent[a];
    }
  }
}

}  // namespace fastseg
