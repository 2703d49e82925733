// Run-based connected-component labelling: a two-pass union-find over runs, z-slabs in parallel.
//
// The unit of work is the run: a maximal stretch of one x-row whose voxels share a nonzero key (the
// input value for multi-valued labelling, 1 for a mask). Labelling runs instead of voxels makes the
// union-find as small as the number of runs, a handful per row in an organ segmentation, and it
// replaces cc3d's per-voxel decision tree over the 13 backward neighbours by one merge-like scan per
// neighbour row.
//
//   1. Count (parallel over rows): the number of runs of every row; a prefix sum gives each row's
//      first run index, so runs are numbered in raster order of their first voxel.
//   2. Scan (slabs of consecutive rows, a few per thread): extract the runs of a row; link each run
//      to the runs it touches in the stencil's earlier rows (components.h draws the stencil).
//      Rows (dz, dy) of the stencil whose dx spans -1..1 let runs touch at a corner ("diagonal"),
//      the others need a shared x. Links go from the larger root to the smaller, so each tree's
//      root is its first run. A slab only links rows of its own: no two threads ever touch the
//      same tree.
//   3. Seams (sequential): the first H + 1 rows of every slab but the first are linked to the
//      earlier rows that belong to the slabs before.
//   4. Flatten (sequential, one pass over the runs in index order): a root gets the next label;
//      any other run p takes the label already stored at its parent (parent[p] < p), so labels are
//      1..n in raster order of each component's first voxel.
//   5. Write (parallel over rows): each row is filled from its runs, background with 0.
//
// Every labelling but that of masks under full connectivity runs here (components_blocks.h has the
// faster variant for those); hole filling and nnU-Net's largest-component filter run steps 1-4 on
// their own keys (components_filters.cpp). The run tables are scratch memory recycled between calls
// (scratch.h): at tens of MB per volume, mapping them fresh each time would cost a third of a
// labelling.
#pragma once

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "components_common.h"
#include "fastseg/components.h"
#include "scratch.h"

namespace fastseg::cpu::cc {

// --- the stencil as rows ---------------------------------------------------------------------------

// The earlier rows a run can touch: (dz, dy) and whether runs touch diagonally there (reach 1) or
// only through a shared x (reach 0). Derived from the voxel stencil of components.h.
struct RowStencil {
  int rows = 0;
  int64_t dz[4] = {}, dy[4] = {};
  int32_t reach[4] = {};
  bool volumetric = true;
};

inline RowStencil row_stencil(int connectivity) {
  int hops = 0;
  bool volumetric = true;
  if (!connectivity_rule(connectivity, &hops, &volumetric))
    throw std::invalid_argument("connectivity must be 26, 18 or 6 (3D) or 8 or 4 (in-plane), got " +
                                std::to_string(connectivity));
  RowStencil st;
  st.volumetric = volumetric;
  // Offsets 1..12 come in groups of three (dx = -1, 0, 1) per earlier row; offset 0 is the row itself.
  for (int k = 1; k < kMaxBackward; k += 3) {
    const bool any = in_stencil(k, hops, volumetric) || in_stencil(k + 1, hops, volumetric);
    if (!any) continue;
    st.dz[st.rows] = backward_offset(k).dz;
    st.dy[st.rows] = backward_offset(k).dy;
    st.reach[st.rows] = in_stencil(k, hops, volumetric) ? 1 : 0;
    ++st.rows;
  }
  return st;
}

// --- the run table -----------------------------------------------------------------------------------

template <typename K>
struct Runs {
  Grid g{};
  int64_t rows = 0;
  std::vector<int64_t> offset;           // [rows + 1] index of the first run of each row
  Scratch<int32_t> start;      // [R] first x of the run
  Scratch<int32_t> stop;       // [R] one past its last x
  Scratch<K> key;              // [R] key of the run (multi-valued keys only)
  Scratch<cc_index_t> parent;  // [R] union-find parent; after flatten(): the label 1..n
  int64_t total = 0;                     // R
  int64_t n = 0;                         // components, after flatten()
};

// Elements per 8-byte chunk, and whether chunk [x, x + kChunk) repeats the elements one before it
// (then no key changes inside it, whatever the key): run extraction skips such chunks, which make
// up most of a label map. x >= 1.
template <typename T>
constexpr int64_t kChunk = sizeof(T) < 8 ? 8 / sizeof(T) : 1;

template <typename T>
inline bool repeats_previous(const T* v, int64_t x) {
  uint64_t a, b;
  std::memcpy(&a, v + x, 8);
  std::memcpy(&b, v + x - 1, 8);
  return a == b;
}

// Number of runs of one row (a loop the compiler vectorises for plain keys).
template <typename Key, typename T>
int64_t count_row(const T* v, int64_t W, const Key& key) {
  using K = typename Key::key_t;
  int64_t n = key(v[0]) != K(0);
  for (int64_t x = 1; x < W; ++x) {
    const K cur = key(v[x]);
    n += (cur != K(0)) & (cur != key(v[x - 1]));
  }
  return n;
}

// The runs of one row into scratch buffers s, e, k of W + 1 entries each (branch-free: every x
// writes a candidate, and the counters only advance at a run boundary; chunks that repeat their
// predecessors are skipped). Returns the run count.
template <typename Key, typename T>
int64_t extract_row(const T* v, int64_t W, const Key& key, int32_t* s, int32_t* e, typename Key::key_t* k) {
  using K = typename Key::key_t;
  constexpr int64_t G = kChunk<T>;
  int64_t ns = 0, ne = 0;
  K prev = 0;
  auto step = [&](int64_t x) {
    const K cur = key(v[x]);
    const bool change = cur != prev;
    s[ns] = static_cast<int32_t>(x);
    k[ns] = cur;
    ns += change & (cur != K(0));
    e[ne] = static_cast<int32_t>(x);
    ne += change & (prev != K(0));
    prev = cur;
  };
  step(0);
  int64_t x = 1;
  for (; x + G <= W; x += G) {
    if (repeats_previous(v, x)) continue;
    for (int64_t i = x; i < x + G; ++i) step(i);
  }
  for (; x < W; ++x) step(x);
  e[ne] = static_cast<int32_t>(W);
  return ns;
}

// Links runs [j, je) of a row to the runs [k, ke) they touch in one earlier row (a merge-like scan:
// both lists are sorted by x, so the first candidate k only moves forward).
template <bool kBinary, typename K>
void link_rows(cc_index_t* parent, const int32_t* start, const int32_t* stop, const K* key, int64_t j, int64_t je,
               int64_t k, int64_t ke, int32_t reach) {
  for (; j < je; ++j) {
    const int32_t s = start[j], e = stop[j] + reach;
    // Runs that end before run j can reach them end before every later run of the row too.
    while (k < ke && stop[k] + reach <= s) ++k;
    for (int64_t i = k; i < ke && start[i] < e; ++i)
      if (kBinary || key[i] == key[j]) merge<true>(parent, static_cast<cc_index_t>(j), static_cast<cc_index_t>(i), SerialLink{});
  }
}

// Links the runs of row r to the runs they touch in its stencil rows that lie in [nlo, nhi).
template <bool kBinary, typename K>
void link_row(Runs<K>& t, const RowStencil& st, int64_t r, int64_t nlo, int64_t nhi) {
  const int64_t H = t.g.H;
  const int64_t z = r / H, y = r % H;
  const int64_t j = t.offset[r], je = t.offset[r + 1];
  if (j == je) return;
  for (int q = 0; q < st.rows; ++q) {
    const int64_t zz = z + st.dz[q], yy = y + st.dy[q];
    if (zz < 0 || yy < 0 || yy >= H) continue;
    const int64_t nr = zz * H + yy;
    if (nr < nlo || nr >= nhi) continue;
    link_rows<kBinary>(t.parent.get(), t.start.get(), t.stop.get(), t.key.get(), j, je, t.offset[nr],
                       t.offset[nr + 1], st.reach[q]);
  }
}

// Steps 1-4 of the header comment: runs, links, seams, labels. T is the input element type.
template <typename Key, typename T>
void label_runs(const T* in, Grid g, int connectivity, const Key& key, Runs<typename Key::key_t>& t) {
  using K = typename Key::key_t;
  const RowStencil st = row_stencil(connectivity);
  t.g = g;
  t.rows = g.D * g.H;
  const int64_t W = g.W, rows = t.rows;
  t.offset.assign(rows + 1, 0);
  if (rows == 0 || W == 0) return;

  const int threads = worker_count(rows * W);
  const int64_t slabs = slab_count(threads, rows);

  // 1. Count.
#pragma omp parallel for schedule(dynamic, kRowChunk) num_threads(threads)
  for (int64_t r = 0; r < rows; ++r) t.offset[r + 1] = count_row(in + r * W, W, key);
  for (int64_t r = 0; r < rows; ++r) t.offset[r + 1] += t.offset[r];
  t.total = t.offset[rows];
  // One entry of padding: extract_row writes one past a row's runs (see the scan below).
  t.start.reset(t.total + 1);
  t.stop.reset(t.total + 1);
  t.parent.reset(t.total);
  if (!Key::kBinary) t.key.reset(t.total + 1);

  // 2. Scan, slab by slab.
#pragma omp parallel num_threads(threads)
  {
    // extract_row writes one entry past a row's runs: a later row's first (rewritten when that row is
    // extracted) or the padding entry. Where that entry is not this slab's (the slab's last runs;
    // the next slab may be another thread's), the row goes through scratch.
    std::vector<int32_t> rs(W + 1), re(W + 1);
    std::vector<K> rk(W + 1);
#pragma omp for schedule(dynamic, 1)
    for (int64_t s = 0; s < slabs; ++s) {
      const int64_t lo = s * rows / slabs, hi = (s + 1) * rows / slabs;
      for (int64_t r = lo; r < hi; ++r) {
        const int64_t o = t.offset[r], n = t.offset[r + 1] - o;
        if (t.offset[r + 1] < t.offset[hi]) {
          extract_row(in + r * W, W, key, t.start.get() + o, t.stop.get() + o, Key::kBinary ? rk.data() : t.key.get() + o);
        } else {
          extract_row(in + r * W, W, key, rs.data(), re.data(), rk.data());
          std::memcpy(t.start.get() + o, rs.data(), n * sizeof(int32_t));
          std::memcpy(t.stop.get() + o, re.data(), n * sizeof(int32_t));
          if (!Key::kBinary) std::memcpy(t.key.get() + o, rk.data(), n * sizeof(K));
        }
        for (int64_t j = o; j < o + n; ++j) t.parent[j] = static_cast<cc_index_t>(j);
        link_row<Key::kBinary>(t, st, r, lo, rows);
      }
    }
  }

  // 3. Seams: rows of slab s whose stencil reaches back into slab s - 1.
  for (int64_t s = 1; s < slabs; ++s) {
    const int64_t lo = s * rows / slabs, hi = (s + 1) * rows / slabs;
    for (int64_t r = lo; r < std::min(hi, lo + g.H + 1); ++r) link_row<Key::kBinary>(t, st, r, 0, lo);
  }

  // 4. Flatten: parent[p] <= p, and entries below p already hold labels.
  cc_index_t* parent = t.parent.get();
  cc_index_t n = 0;
  for (int64_t p = 0; p < t.total; ++p) {
    const cc_index_t up = parent[p];
    parent[p] = up == static_cast<cc_index_t>(p) ? ++n : parent[up];
  }
  t.n = n;
}

// 5. Label volume from labelled runs. Rows of long runs are filled run by run; rows of short runs
// (noise) voxel by voxel without branches, re-reading the input: a voxel's run is the count of run
// starts up to it.
template <typename Key, typename T>
void write_labels(const T* in, const Key& key, const Runs<typename Key::key_t>& t, cc_index_t* out) {
  using K = typename Key::key_t;
  const int64_t W = t.g.W;
#pragma omp parallel for schedule(dynamic, kRowChunk)
  for (int64_t r = 0; r < t.rows; ++r) {
    cc_index_t* o = out + r * W;
    const int64_t first = t.offset[r], runs = t.offset[r + 1] - first;
    if (runs * 16 < W) {
      int64_t x = 0;
      for (int64_t j = first; j < first + runs; ++j) {
        std::fill(o + x, o + t.start[j], cc_index_t{0});
        std::fill(o + t.start[j], o + t.stop[j], t.parent[j]);
        x = t.stop[j];
      }
      std::fill(o + x, o + W, cc_index_t{0});
    } else {
      // j: runs started so far; a foreground voxel belongs to run j - 1 (background reads run 0 and
      // masks it out, so the loop has no branch).
      const cc_index_t* label = t.parent.get() + first;
      const T* v = in + r * W;
      int64_t j = 0;
      K prev = 0;
      for (int64_t x = 0; x < W; ++x) {
        const K cur = key(v[x]);
        j += (cur != K(0)) & (cur != prev);
        o[x] = label[j > 0 ? j - 1 : 0] & (cc_index_t{0} - static_cast<cc_index_t>(cur != K(0)));
        prev = cur;
      }
    }
  }
}

}  // namespace fastseg::cpu::cc
