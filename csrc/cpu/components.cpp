// CPU connected-component labelling: run-based two-pass union-find over z-slabs in parallel.
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
// Masks under full connectivity (26, or 8 in a plane) take a faster variant of the same scheme on
// bit-packed rows, where the runs are those of 2 x 2 blocks of rows (see "runs of row blocks" below).
// Hole filling and nnU-Net's largest-component filter reuse steps 1-4 on their own keys (background,
// membership in a label set). Statistics (component_stats) are one more pass, run by run, over a
// label volume. The run tables are scratch memory recycled between calls (scratch.h): at tens of MB
// per volume, mapping them fresh each time would cost a third of a labelling.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>
#include <type_traits>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "fastseg/components.h"
#include "kernels.h"
#include "scratch.h"

namespace fastseg::cpu {

// Set bits of each OR-run [start[j], stop[j]) (j < runs) in each of a block's bit rows:
// total[j] = the run's voxels, hit[j] bit i = row i has voxels in it. Compiled twice on x86-64 Linux,
// with and without the POPCNT instruction (the loader picks one), so that a portable build still
// counts bits in one instruction where the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
__attribute__((target_clones("popcnt", "default")))
#endif
void count_block_runs(const uint64_t* const* rows, int nrows, const int32_t* start, const int32_t* stop, int64_t runs,
                      uint32_t* total, uint8_t* hit) {
  for (int64_t j = 0; j < runs; ++j) {
    const int64_t s = start[j], e = stop[j], ws = s / 64, we = (e - 1) / 64;
    const uint64_t head = ~uint64_t{0} << (s % 64), tail = ~uint64_t{0} >> (63 - (e - 1) % 64);
    uint32_t sum = 0;
    uint8_t h = 0;
    for (int i = 0; i < nrows; ++i) {
      const uint64_t* r = rows[i];
      int64_t c;
      if (ws == we) {
        c = __builtin_popcountll(r[ws] & head & tail);
      } else {
        c = __builtin_popcountll(r[ws] & head) + __builtin_popcountll(r[we] & tail);
        for (int64_t w = ws + 1; w < we; ++w) c += __builtin_popcountll(r[w]);
      }
      sum += static_cast<uint32_t>(c);
      h |= static_cast<uint8_t>((c > 0) << i);
    }
    total[j] = sum;
    hit[j] = h;
  }
}

namespace {

// A labelling problem: D planes of H rows of W voxels, C order. A 2D image is D = 1; a stack of
// slices labelled one by one is D slices with an in-plane connectivity.
struct Grid {
  int64_t D, H, W;
};

Grid grid_of(const int64_t shape[3]) { return Grid{shape[0], shape[1], shape[2]}; }

// Parallel decomposition. Slabs of consecutive rows are scanned independently and stitched at their
// seams (sequentially, so each seam costs a little); there are two per thread, handed out
// dynamically, so that a thread the OS preempts (other jobs on a 2-core machine) delays the others by
// one slab, not by its whole share. Row loops go in chunks of kRowChunk rows, also dynamically.
constexpr int kSlabsPerThread = 2;
constexpr int64_t kRowChunk = 64;

// Threads for a volume: one below 2^16 voxels, where a second thread costs more than it saves.
int worker_count(int64_t voxels) { return voxels < (int64_t{1} << 16) ? 1 : std::max(1, omp_get_max_threads()); }

int64_t slab_count(int threads, int64_t rows) {
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

// --- the stencil as rows ---------------------------------------------------------------------------

// The earlier rows a run can touch: (dz, dy) and whether runs touch diagonally there (reach 1) or
// only through a shared x (reach 0). Derived from the voxel stencil of components.h.
struct RowStencil {
  int rows = 0;
  int64_t dz[4] = {}, dy[4] = {};
  int32_t reach[4] = {};
  bool volumetric = true;
};

RowStencil row_stencil(int connectivity) {
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

// --- statistics ----------------------------------------------------------------------------------

// Accumulates `voxels` voxels inside the box [z0, z1) x [y0, y1) x [x0, x1) into entry c of a
// thread's table; the first call for c also records `value`.
template <typename V>
void add_box(ComponentTable<V>& s, int64_t c, int64_t voxels, int64_t z0, int64_t y0, int64_t x0, int64_t z1,
             int64_t y1, int64_t x1, V value) {
  int64_t* b = &s.bbox[6 * c];
  if (s.count[c] == 0) {
    b[0] = z0, b[1] = y0, b[2] = x0, b[3] = z1, b[4] = y1, b[5] = x1;
    s.value[c] = value;
  } else {
    b[0] = std::min(b[0], z0), b[1] = std::min(b[1], y0), b[2] = std::min(b[2], x0);
    b[3] = std::max(b[3], z1), b[4] = std::max(b[4], y1), b[5] = std::max(b[5], x1);
  }
  s.count[c] += voxels;
}

// One run [x0, x1) of row (z, y).
template <typename V>
void add_run(ComponentTable<V>& s, int64_t c, int64_t z, int64_t y, int64_t x0, int64_t x1, V value) {
  add_box(s, c, x1 - x0, z, y, x0, z + 1, y + 1, x1, value);
}

// Folds per-thread tables into (count, bbox, value) [n], in thread order: counts add, boxes grow,
// and each value is that of the first table that saw the component (where threads took shares of
// the rows in order, the one of its first voxel).
template <typename V>
void fold_tables(const std::vector<ComponentTable<V>>& parts, int64_t n, int64_t* count, int64_t* bbox, V* value) {
  std::fill(count, count + n, int64_t{0});
  std::fill(bbox, bbox + 6 * n, int64_t{0});
  std::fill(value, value + n, V(0));
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < n; ++c) {
    for (const ComponentTable<V>& s : parts) {
      if (s.count[c] == 0) continue;
      const int64_t* b = &s.bbox[6 * c];
      int64_t* d = bbox + 6 * c;
      if (count[c] == 0) {
        std::copy(b, b + 6, d);
        value[c] = s.value[c];
      } else {
        for (int a = 0; a < 3; ++a) d[a] = std::min(d[a], b[a]), d[a + 3] = std::max(d[a + 3], b[a + 3]);
      }
      count[c] += s.count[c];
    }
  }
}

// Statistics of labelled runs (parent[j] = label): each thread takes a share of the rows in order.
template <typename K, typename T>
void stats_of_runs(const T* in, const Runs<K>& t, ComponentTable<T>& out) {
  const int64_t H = t.g.H, W = t.g.W, n = t.n;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(worker_count(t.rows * W), t.rows)));
  std::vector<ComponentTable<T>> parts(threads);
#pragma omp parallel num_threads(threads)
  {
    const int s = omp_get_thread_num();
    ComponentTable<T>& mine = parts[s];
    mine.reset(n);
    const int64_t lo = s * t.rows / threads, hi = (s + 1) * t.rows / threads;
    for (int64_t r = lo; r < hi; ++r)
      for (int64_t j = t.offset[r]; j < t.offset[r + 1]; ++j)
        add_run<T>(mine, static_cast<int64_t>(t.parent[j]) - 1, r / H, r % H, t.start[j], t.stop[j], in[r * W + t.start[j]]);
  }
  out.reset(n);
  fold_tables(parts, n, out.count.get(), out.bbox.get(), out.value.get());
}

// --- hole filling and largest-component filtering, on labelled runs ------------------------------

template <typename Key, typename T>
void keep_largest(const T* seg, T* out, Grid g, const Key& key, T background, int connectivity) {
  Runs<uint8_t> t;
  label_runs(seg, g, connectivity, key, t);
  const int64_t W = g.W;
  // Sizes, then keep every component of the largest size (acvl_utils keeps all that tie).
  std::vector<int64_t> size(t.n + 1, 0);
  for (int64_t j = 0; j < t.total; ++j) size[t.parent[j]] += t.stop[j] - t.start[j];
  const int64_t largest = *std::max_element(size.begin(), size.end());
#pragma omp parallel for schedule(dynamic, kRowChunk)
  for (int64_t r = 0; r < t.rows; ++r) {
    std::memcpy(out + r * W, seg + r * W, W * sizeof(T));
    for (int64_t j = t.offset[r]; j < t.offset[r + 1]; ++j)
      if (size[t.parent[j]] != largest) std::fill(out + r * W + t.start[j], out + r * W + t.stop[j], background);
  }
}

// --- full connectivity on masks: runs of row blocks ----------------------------------------------
//
// Under 26-connectivity every voxel of a 2 x 2 block of rows {z0, z0 + 1} x {y0, y0 + 1} touches
// every voxel of the same or the next x column of the block. So the x-runs of the block's OR row are
// exactly its connected pieces, and one union-find node per OR-run replaces up to four row runs:
// four times fewer rows to link, and at 50% noise (94% of OR columns set) about 17 times fewer
// nodes. 8-connectivity in a plane is the same with blocks of 2 rows (bz = 1).
//
// Two OR-runs of neighbouring blocks touch only through voxels that face each other: block (Z, Y)
// sees its earlier neighbours (Z, Y-1), (Z-1, Y-1), (Z-1, Y) and (Z-1, Y+1) through the rows listed
// in kFaces26. Run j of the block and run k of a neighbour connect when a facing voxel of j at
// x and one of k at x' have |x - x'| <= 1; link_block() finds all such pairs of a face with word
// operations and per-x tables of run indices (no branch on the layout of the runs).
//
// The rows are bit-packed first (64 voxels a word). Blocks are numbered Z-major, runs in block order,
// which is not raster order: each run carries a key that orders components as their first voxels do
// (extract_block()), the flatten step keeps each component's smallest key and ranks those with a
// bitmap, so the labels equal the run labeller's.

constexpr int64_t kWord = 64;

// Set bits of a word. Portable builds have no POPCNT instruction (and __builtin_popcountll then calls
// into libgcc), so: the SWAR sum.
inline int64_t popcount64(uint64_t v) {
  v = v - ((v >> 1) & 0x5555555555555555ull);
  v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
  v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0Full;
  return static_cast<int64_t>((v * 0x0101010101010101ull) >> 56);
}

// Bits of the run starts of row `o` (words words): set where o is set and the bit before is not.
inline uint64_t start_bits(const uint64_t* o, int64_t w) {
  const uint64_t carry = w > 0 ? o[w - 1] >> 63 : 0;
  return o[w] & ~((o[w] << 1) | carry);
}

// The mask as bit rows: bit x of row r is word x / 64 of row r. Each row (and each scratch row) carries
// kPad zero words after its `words`, so that a scan may read word w + 1 of its last word and word
// `words` itself (where the ends of runs that reach W fall). Row `rows` is all zero and stands for
// rows outside the volume.
constexpr int64_t kPad = 2;

struct BitRows {
  int64_t rows = 0, words = 0;
  Scratch<uint64_t> bits;  // [rows + 1, words + kPad]
  const uint64_t* row(int64_t r) const { return bits.get() + r * (words + kPad); }
};

template <typename Key, typename T>
void pack_rows(const T* in, Grid g, const Key& key, BitRows& b) {
  b.rows = g.D * g.H;
  b.words = (g.W + kWord - 1) / kWord;
  const int64_t stride = b.words + kPad;
  b.bits.reset((b.rows + 1) * stride);
  std::fill(b.bits.get() + b.rows * stride, b.bits.get() + (b.rows + 1) * stride, uint64_t{0});
  const int64_t W = g.W;
#pragma omp parallel for schedule(dynamic, kRowChunk)
  for (int64_t r = 0; r < b.rows; ++r) {
    const T* v = in + r * W;
    uint64_t* out = b.bits.get() + r * stride;
    std::fill(out + b.words, out + stride, uint64_t{0});
    int64_t w = 0;
#if defined(__SSE2__)
    if constexpr (std::is_same_v<Key, NonzeroKey<uint8_t>>) {
      // Bytes != 0, 16 at a time: compare with zero, gather the sign bits, invert.
      const __m128i zero = _mm_setzero_si128();
      for (; (w + 1) * kWord <= W; ++w) {
        uint64_t word = 0;
        for (int q = 0; q < 4; ++q) {
          const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v + w * kWord + 16 * q));
          const uint64_t zeros = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, zero)));
          word |= (~zeros & 0xFFFFull) << (16 * q);
        }
        out[w] = word;
      }
    }
#endif
    for (; w < b.words; ++w) {
      const int64_t x0 = w * kWord, n = std::min(kWord, W - x0);
      uint64_t word = 0;
      for (int64_t i = 0; i < n; ++i) word |= uint64_t{key(v[x0 + i]) != 0} << i;
      out[w] = word;
    }
  }
}

struct BlockGrid {
  int64_t D = 0, H = 0, W = 0;
  int64_t bz = 0;          // rows of a block along z: 2 (26-connectivity) or 1 (8-connectivity per plane)
  int64_t BZ = 0, BY = 0;  // blocks along z and y
  const BitRows* bits = nullptr;
  // Bit row of voxel row (z, y); the all-zero row outside the volume.
  const uint64_t* row(int64_t z, int64_t y) const {
    return bits->row((z >= 0 && z < D && y >= 0 && y < H) ? z * H + y : bits->rows);
  }
  // The rows of block (Z, Y): rows[2 * a + b] is voxel row (bz * Z + a, 2 * Y + b). Returns 2 * bz.
  int block_rows(int64_t Z, int64_t Y, const uint64_t** rows) const {
    for (int64_t a = 0; a < bz; ++a)
      for (int64_t b = 0; b < 2; ++b) rows[2 * a + b] = row(bz * Z + a, 2 * Y + b);
    return static_cast<int>(2 * bz);
  }
};

// Earlier neighbour blocks of block (Z, Y), at (Z + dZ, Y + dY), and the rows (indices into both
// blocks' block_rows) through which the two face each other. 26-connectivity, rows 0..3 of a block
// being (z, y), (z, y + 1), (z + 1, y), (z + 1, y + 1):
//   (Z, Y - 1):     rows 0, 2 face the neighbour's 1, 3    (same planes, the row before)
//   (Z - 1, Y - 1): row 0 faces the neighbour's 3          (plane and row before: an edge)
//   (Z - 1, Y):     rows 0, 1 face the neighbour's 2, 3    (the plane before)
//   (Z - 1, Y + 1): row 1 faces the neighbour's 2          (plane before, row after: an edge)
// In-plane 8-connectivity has blocks of 2 rows and one face: row 0 faces the neighbour's row 1.
struct Face {
  int dZ, dY;
  int n_cur, n_nb;
  int cur[2], nb[2];
};
constexpr Face kFaces26[4] = {{0, -1, 2, 2, {0, 2}, {1, 3}},
                              {-1, -1, 1, 1, {0, 0}, {3, 3}},
                              {-1, 0, 2, 2, {0, 1}, {2, 3}},
                              {-1, 1, 1, 1, {1, 1}, {2, 2}}};
constexpr Face kFaces8[1] = {{0, -1, 1, 1, {0, 0}, {1, 1}}};

struct BlockRuns {
  BlockGrid g{};
  int64_t blocks = 0, total = 0, n = 0;
  std::vector<int64_t> offset;  // [blocks + 1] first OR-run of each block
  Scratch<int32_t> start;       // [R] first x of the OR-run
  Scratch<int32_t> stop;        // [R] one past its last x
  Scratch<cc_index_t> parent;   // [R] union-find parent, then the root
  Scratch<uint64_t> first;      // [R] ranking key of the run (root: the smallest of its component)
  Scratch<cc_index_t> label;    // [R] final label 1..n (roots only)
};

inline void or_rows(const uint64_t* const* rows, int n, int64_t words, uint64_t* out) {
  for (int64_t w = 0; w < words; ++w) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= rows[i][w];
    out[w] = v;
  }
}

// row[x] = value(j) over each run j in [j0, j1), that is for x in [start[j], stop[j]); other entries
// are left as they were. Runs come in x order, and each stores 8 entries at a time from its start,
// spilling past its end into what the next run then overwrites: one predictable store pair per short
// run instead of a loop whose length changes every time. `row` needs kPaintSlack entries past W.
constexpr int64_t kPaintSlack = 8;

template <typename F>
inline void paint_runs(const int32_t* start, const int32_t* stop, int64_t j0, int64_t j1, F value, cc_index_t* row) {
  for (int64_t j = j0; j < j1; ++j) {
    const cc_index_t v = value(j);
#if defined(__SSE2__)
    const __m128i vv = _mm_set1_epi32(static_cast<int>(v));
    for (int32_t x = start[j]; x < stop[j]; x += 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(row + x), vv);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(row + x + 4), vv);
    }
#else
    for (int32_t x = start[j]; x < stop[j]; x += 8)
      for (int k = 0; k < 8; ++k) row[x + k] = v;
#endif
  }
}

// What linking needs of a block: its OR row (words + kPad words) and, at every x where that row is
// set, the index of the OR-run over x.
struct BlockView {
  const uint64_t* o;
  const cc_index_t* ids;
};

// Per-thread scratch. Scanning a slab keeps the views of recent blocks in a ring (a power of two of
// at least BY + 2 slots, indexed by block), filled as blocks are extracted; stitching seams has no
// ring and builds the two views it needs on demand (slots 0 and 1).
struct BlockScratch {
  int64_t words = 0, o_stride = 0, id_stride = 0, mask = 0;
  bool ring = false;
  std::vector<uint64_t> o;      // [slots, o_stride]
  std::vector<cc_index_t> ids;  // [slots, id_stride]
  std::vector<uint64_t> fc, fn;  // facing rows of the block and of a neighbour [words + kPad]
  BlockScratch(int64_t words_, int64_t min_slots) : words(words_), ring(min_slots > 0) {
    int64_t slots = 2;
    while (slots < min_slots) slots *= 2;
    mask = slots - 1;
    o_stride = words + kPad;
    id_stride = words * kWord + kWord;
    o.assign(slots * o_stride, 0);
    ids.assign(slots * id_stride, 0);
    fc.assign(words + kPad, 0);
    fn.assign(words + kPad, 0);
  }
  uint64_t* o_slot(int64_t i) { return o.data() + (i & mask) * o_stride; }
  cc_index_t* id_slot(int64_t i) { return ids.data() + (i & mask) * id_stride; }
};

// The view of block bk: from the ring, or built into slot `spare`.
BlockView block_view(const BlockRuns& t, BlockScratch& s, int64_t bk, int64_t Z, int64_t Y, int spare) {
  if (s.ring) return {s.o_slot(bk), s.id_slot(bk)};
  const uint64_t* rows[4];
  uint64_t* o = s.o_slot(spare);
  or_rows(rows, t.g.block_rows(Z, Y, rows), s.words, o);
  cc_index_t* ids = s.id_slot(spare);
  paint_runs(t.start.get(), t.stop.get(), t.offset[bk], t.offset[bk + 1], [](int64_t j) { return static_cast<cc_index_t>(j); }, ids);
  return {o, ids};
}

// Links the OR-runs of block (Z, Y) to those of its earlier neighbours whose block index is in
// [nlo, nhi).
//
// Bit-parallel: with F_cur, F_nb the facing rows of the block and of a neighbour and O_nb the
// neighbour's OR row, a voxel x of F_cur touches
//   A: the neighbour's run over x, where O_nb[x] is set and F_nb has a bit in x - 1..x + 1 (any such
//      bit is in the run over x, as O_nb is set between them);
//   B, C: where O_nb[x] is clear, the runs over x - 1 and x + 1, where F_nb is set there.
// Neighbouring bits of A join the same two runs, so only the first bit of each stretch of A is
// linked. A B bit at x next to an A bit at x - 1 joins the runs that A's stretch joins (x - 1 and x
// share the block's run, and x - 1 lies in the neighbour's run that ends there), and so does a C bit
// next to an A bit at x + 1: those are skipped. Each linked bit costs two table reads and a union,
// with no branch on the run layout.
void link_block(BlockRuns& t, BlockScratch& s, int64_t Z, int64_t Y, int64_t nlo, int64_t nhi) {
  const BlockGrid& g = t.g;
  const int64_t bk = Z * g.BY + Y, words = s.words;
  if (t.offset[bk] == t.offset[bk + 1]) return;
  const uint64_t* rows[4];
  g.block_rows(Z, Y, rows);
  const Face* faces = g.bz == 2 ? kFaces26 : kFaces8;
  const int n_faces = g.bz == 2 ? 4 : 1;
  const cc_index_t* cur = nullptr;
  cc_index_t* parent = t.parent.get();
  uint64_t* fc = s.fc.data();
  uint64_t* fn = s.fn.data();
  for (int q = 0; q < n_faces; ++q) {
    const Face& f = faces[q];
    const int64_t nZ = Z + f.dZ, nY = Y + f.dY, nbk = nZ * g.BY + nY;
    if (nZ < 0 || nY < 0 || nY >= g.BY || nbk < nlo || nbk >= nhi) continue;
    if (t.offset[nbk] == t.offset[nbk + 1]) continue;
    if (!cur) cur = block_view(t, s, bk, Z, Y, 0).ids;
    const BlockView nb = block_view(t, s, nbk, nZ, nY, 1);
    const uint64_t* nrows[4];
    g.block_rows(nZ, nY, nrows);
    const uint64_t* fcr[2] = {rows[f.cur[0]], rows[f.cur[1]]};
    const uint64_t* fnr[2] = {nrows[f.nb[0]], nrows[f.nb[1]]};
    or_rows(fcr, f.n_cur, words, fc);
    or_rows(fnr, f.n_nb, words, fn);
    uint64_t carry_a = 0;
    for (int64_t w = 0; w < words; ++w) {
      const uint64_t fnw = fn[w], fcw = fc[w], on = nb.o[w];
      const uint64_t before = w > 0 ? fn[w - 1] : 0;
      if (fcw == 0 || (fnw | before | fn[w + 1]) == 0) {
        carry_a = 0;
        continue;
      }
      const uint64_t left = (fnw << 1) | (before >> 63);  // bit x: F_nb[x - 1]
      const uint64_t right = (fnw >> 1) | (fn[w + 1] << 63);  // bit x: F_nb[x + 1]
      const uint64_t a = fcw & on & (fnw | left | right);
      const cc_index_t* c = cur + w * kWord;
      const cc_index_t* n = nb.ids + w * kWord;
      const uint64_t a_before = (a << 1) | carry_a;  // bit x: A[x - 1]
      for (uint64_t e = a & ~a_before; e; e &= e - 1) {
        const int x = __builtin_ctzll(e);
        unite_splicing(parent, c[x], n[x]);
      }
      carry_a = a >> 63;
      for (uint64_t e = fcw & ~on & left & ~a_before; e; e &= e - 1) {
        const int x = __builtin_ctzll(e);
        unite_splicing(parent, c[x], n[x - 1]);
      }
      for (uint64_t e = fcw & ~on & right & ~(a >> 1); e; e &= e - 1) {
        const int x = __builtin_ctzll(e);
        unite_splicing(parent, c[x], n[x + 1]);
      }
    }
  }
}

// OR-runs of block (Z, Y) into t from index t.offset[bk], each its own root, with its ranking key;
// its view into the ring.
//
// The key of a run is r * W + s: r the first row of the block (in raster order) with a voxel in the
// run, s the run's start. It is not the run's first voxel (that lies at or after s in row r), but it
// orders components as their first voxels do: a component's smallest key lies in its first row, in
// the run of that row that holds its first voxel (a run further left would hold an earlier voxel),
// and two components never share a key (one row, one start: one run). So the ranks are the same.
//
// Which rows meet which runs, all runs at once: adding row R (a subset of the OR row O) to O carries
// through every run of O that holds a bit of R and out at the bit just past the run, which O leaves
// clear; runs without bits of R add nothing. So (O + R) & ~O, a multi-word addition, marks exactly
// the ends of the runs that R meets, for runs of any length.
void extract_block(BlockRuns& t, BlockScratch& s, int64_t Z, int64_t Y) {
  const BlockGrid& g = t.g;
  const int64_t bk = Z * g.BY + Y, words = s.words;
  const uint64_t* rows[4];
  const int nr = g.block_rows(Z, Y, rows);
  uint64_t* o = s.o_slot(bk);
  or_rows(rows, nr, words, o);
  const int64_t j0 = t.offset[bk];
  const uint64_t* row[4];
  uint64_t key[4], carry[4] = {0, 0, 0, 0};
  const int64_t z0 = g.bz * Z, y0 = 2 * Y;
  for (int i = 0; i < 4; ++i) {
    const int k = std::min(i, nr - 1);
    row[i] = rows[k];
    key[i] = static_cast<uint64_t>(((z0 + k / 2) * g.H + y0 + k % 2) * g.W);
  }
  int64_t ns = j0, ne = j0;
  // Word `words` is padding (0 in O and in every row): it receives the ends of runs that reach W.
  for (int64_t w = 0; w <= words; ++w) {
    const uint64_t ow = o[w], prev = (ow << 1) | (w > 0 ? o[w - 1] >> 63 : 0);
    uint64_t meets[4];
    for (int i = 0; i < 4; ++i) {
      const uint64_t sum = ow + row[i][w], total = sum + carry[i];
      carry[i] = (sum < ow) | (total < sum);
      meets[i] = total & ~ow;
    }
    // Per run end: bit 0 and bit 1 of the index of the first row that meets the run.
    const uint64_t none01 = ~(meets[0] | meets[1]);
    const uint64_t b0 = (meets[1] & ~meets[0]) | (none01 & ~meets[2]);
    const uint64_t b1 = none01;
    for (uint64_t st = ow & ~prev; st; st &= st - 1) t.start[ns++] = static_cast<int32_t>(w * kWord + __builtin_ctzll(st));
    for (uint64_t en = ~ow & prev; en; en &= en - 1) {
      const int b = __builtin_ctzll(en);
      const int i = static_cast<int>((b0 >> b) & 1u) | static_cast<int>(((b1 >> b) & 1u) << 1);
      t.stop[ne] = static_cast<int32_t>(w * kWord + b);
      t.first[ne] = key[i] + static_cast<uint64_t>(t.start[ne]);
      ++ne;
    }
  }
  for (int64_t j = j0; j < ns; ++j) t.parent[j] = static_cast<cc_index_t>(j);
  paint_runs(t.start.get(), t.stop.get(), j0, ns, [](int64_t j) { return static_cast<cc_index_t>(j); }, s.id_slot(bk));
}

// dst[x] = lab[x] where bit x of `fg` is set, else 0, for x < W.
inline void write_masked_row(const uint64_t* fg, const cc_index_t* lab, int64_t W, cc_index_t* dst) {
  int64_t w = 0;
#if defined(__SSE2__)
  // Four voxels at a time: a nibble of fg selects one of 16 lane masks.
  alignas(16) static const uint32_t kLanes[16][4] = {
      {0, 0, 0, 0}, {~0u, 0, 0, 0}, {0, ~0u, 0, 0}, {~0u, ~0u, 0, 0},
      {0, 0, ~0u, 0}, {~0u, 0, ~0u, 0}, {0, ~0u, ~0u, 0}, {~0u, ~0u, ~0u, 0},
      {0, 0, 0, ~0u}, {~0u, 0, 0, ~0u}, {0, ~0u, 0, ~0u}, {~0u, ~0u, 0, ~0u},
      {0, 0, ~0u, ~0u}, {~0u, 0, ~0u, ~0u}, {0, ~0u, ~0u, ~0u}, {~0u, ~0u, ~0u, ~0u}};
  // Streaming stores where dst is 16-byte aligned: the output is written once and not read back
  // here, so it need not be fetched into the cache first (half the memory traffic). The caller fences.
  const bool stream = (reinterpret_cast<uintptr_t>(dst) & 15) == 0;
  for (; (w + 1) * kWord <= W; ++w) {
    const uint64_t f = fg[w];
    __m128i* d = reinterpret_cast<__m128i*>(dst + w * kWord);
    const __m128i* l = reinterpret_cast<const __m128i*>(lab + w * kWord);
    for (int q = 0; q < kWord / 4; ++q) {
      const __m128i m = _mm_load_si128(reinterpret_cast<const __m128i*>(kLanes[(f >> (4 * q)) & 15]));
      const __m128i v = _mm_and_si128(_mm_loadu_si128(l + q), m);
      if (stream) {
        _mm_stream_si128(d + q, v);
      } else {
        _mm_storeu_si128(d + q, v);
      }
    }
  }
#endif
  for (int64_t x = w * kWord; x < W; ++x) dst[x] = lab[x] & (0u - static_cast<cc_index_t>((fg[x / kWord] >> (x % kWord)) & 1));
}

// Statistics of labelled OR-runs, each thread over a share of the blocks: a run adds the voxels of
// its rows and the box of the rows that have some, over [start, stop) in x. Values: the input at each
// component's first voxel, found from its root's key (extract_block): the first voxel of that row at
// or after the key's x.
template <typename T>
void block_stats(const T* in, const BlockRuns& t, const std::vector<std::vector<cc_index_t>>& roots, int threads,
                 ComponentTable<T>& out) {
  const BlockGrid& g = t.g;
  const int64_t n = t.n;
  const cc_index_t* parent = t.parent.get();
  const cc_index_t* label = t.label.get();
  std::vector<ComponentTable<T>> parts(threads);
#pragma omp parallel num_threads(threads)
  {
    const int me = omp_get_thread_num(), nt = omp_get_num_threads();
    ComponentTable<T>& mine = parts[me];
    mine.reset(n);
    std::vector<uint32_t> total(g.W / 2 + 2);
    std::vector<uint8_t> hit(g.W / 2 + 2);
    const int64_t lo = me * t.blocks / nt, hi = (me + 1) * t.blocks / nt;
    for (int64_t bk = lo; bk < hi; ++bk) {
      const int64_t j0 = t.offset[bk], runs = t.offset[bk + 1] - j0;
      if (runs == 0) continue;
      const int64_t Z = bk / g.BY, Y = bk % g.BY, z = g.bz * Z, y = 2 * Y;
      const uint64_t* rows[4];
      const int nr = g.block_rows(Z, Y, rows);
      count_block_runs(rows, nr, t.start.get() + j0, t.stop.get() + j0, runs, total.data(), hit.data());
      for (int64_t k = 0; k < runs; ++k) {
        const int64_t j = j0 + k;
        const unsigned h = hit[k];  // bit 2a + b: row (z + a, y + b)
        const int64_t z0 = z + ((h & 3u) ? 0 : 1), z1 = z + ((h & 12u) ? 2 : 1);
        const int64_t y0 = y + ((h & 5u) ? 0 : 1), y1 = y + ((h & 10u) ? 2 : 1);
        add_box<T>(mine, static_cast<int64_t>(label[parent[j]]) - 1, total[k], z0, y0, t.start[j], z1, y1, t.stop[j], T(0));
      }
    }
  }
  out.reset(n);
  fold_tables(parts, n, out.count.get(), out.bbox.get(), out.value.get());
  const int64_t W = g.W;
  for (const std::vector<cc_index_t>& mine : roots)
    for (const cc_index_t r : mine) {
      const uint64_t f = t.first[r];
      const int64_t row = static_cast<int64_t>(f) / W;
      const uint64_t* bitsrow = g.bits->row(row);
      int64_t x = static_cast<int64_t>(f) % W;
      uint64_t word = bitsrow[x / kWord] & (~uint64_t{0} << (x % kWord));
      for (int64_t w = x / kWord; word == 0;) word = bitsrow[++w], x = w * kWord;
      x = (x / kWord) * kWord + __builtin_ctzll(word);
      out.value[label[r] - 1] = in[row * W + x];
    }
}

template <typename Key, typename T>
int64_t label_blocks(const T* in, cc_index_t* out, Grid grid, int connectivity, const Key& key, ComponentTable<T>* stats) {
  BlockRuns t;
  if (grid.D * grid.H * grid.W == 0) return 0;
  BitRows bits;
  pack_rows(in, grid, key, bits);
  BlockGrid& g = t.g;
  g.D = grid.D, g.H = grid.H, g.W = grid.W, g.bz = connectivity == 26 ? 2 : 1, g.bits = &bits;
  g.BZ = (g.D + g.bz - 1) / g.bz;
  g.BY = (g.H + 1) / 2;
  t.blocks = g.BZ * g.BY;
  t.offset.assign(t.blocks + 1, 0);
  const int64_t words = bits.words;
  const int threads = worker_count(grid.D * grid.H * grid.W);
  const int64_t slabs = slab_count(threads, t.blocks);

  // Count the OR-runs of every block.
#pragma omp parallel num_threads(threads)
  {
    std::vector<uint64_t> o(words + kPad);
#pragma omp for schedule(dynamic, kRowChunk)
    for (int64_t bk = 0; bk < t.blocks; ++bk) {
      const uint64_t* rows[4];
      or_rows(rows, g.block_rows(bk / g.BY, bk % g.BY, rows), words, o.data());
      int64_t n = 0;
      for (int64_t w = 0; w < words; ++w) n += popcount64(start_bits(o.data(), w));
      t.offset[bk + 1] = n;
    }
  }
  for (int64_t bk = 0; bk < t.blocks; ++bk) t.offset[bk + 1] += t.offset[bk];
  t.total = t.offset[t.blocks];
  t.start.reset(t.total);
  t.stop.reset(t.total);
  t.parent.reset(t.total);
  t.first.reset(t.total);

  // Extract and link, slab by slab; the seams after.
#pragma omp parallel num_threads(threads)
  {
    BlockScratch scratch(words, g.BY + 2);
#pragma omp for schedule(dynamic, 1)
    for (int64_t sl = 0; sl < slabs; ++sl) {
      const int64_t lo = sl * t.blocks / slabs, hi = (sl + 1) * t.blocks / slabs;
      for (int64_t bk = lo; bk < hi; ++bk) {
        extract_block(t, scratch, bk / g.BY, bk % g.BY);
        link_block(t, scratch, bk / g.BY, bk % g.BY, lo, t.blocks);
      }
    }
  }
  {
    BlockScratch scratch(words, 0);
    for (int64_t sl = 1; sl < slabs; ++sl) {
      const int64_t lo = sl * t.blocks / slabs, hi = (sl + 1) * t.blocks / slabs;
      for (int64_t bk = lo; bk < std::min(hi, lo + g.BY + 2); ++bk) link_block(t, scratch, bk / g.BY, bk % g.BY, 0, lo);
    }
  }

  // Flatten, in parallel over ranges of runs. (1) Each thread resolves its range in index order:
  // parent[p] < p, so parent[parent[p]] is already a root of the range, or a pointer into an earlier
  // range. (2) Range by range, pointers into earlier ranges (by then resolved) take one more hop.
  // Once a run's root is known, the root takes the smaller of its key and the run's (extract_block):
  // an atomic minimum, rarely contended, as keys grow with the run index. (3) The roots' final keys,
  // ranked in raster order through a bitmap, are their labels; the write pass looks every run's
  // label up at its root.
  cc_index_t* parent = t.parent.get();
  uint64_t* first = t.first.get();
  const int64_t R = t.total;
  const int64_t voxels = g.D * g.H * g.W, map_words = (voxels + kWord - 1) / kWord;
  Scratch<uint64_t> firsts(map_words);
  Scratch<cc_index_t> before(map_words);  // roots in earlier words
  t.label.reset(R);
  cc_index_t* label = t.label.get();  // at roots only
  std::vector<std::vector<cc_index_t>> roots(threads);  // per thread, of its range
  std::vector<cc_index_t> counted(threads + 1, 0);      // per thread, roots in its words of the bitmap
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), me = omp_get_thread_num();
    auto range = [&](int64_t k, int64_t n) { return std::make_pair(k * n / nt, (k + 1) * n / nt); };
    std::vector<cc_index_t>& mine = roots[me];
    // first[r] = min(first[r], f), atomically: a root may be reached from several ranges at once.
    auto lower_first = [first](cc_index_t r, uint64_t f) {
      uint64_t cur = __atomic_load_n(&first[r], __ATOMIC_RELAXED);
      while (f < cur && !__atomic_compare_exchange_n(&first[r], &cur, f, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
      }
    };
    {
      const auto [lo, hi] = range(me, R);
      for (int64_t p = lo; p < hi; ++p) {
        const cc_index_t up = parent[p];
        if (up == static_cast<cc_index_t>(p)) {
          mine.push_back(up);
        } else if (up >= lo) {
          const cc_index_t r = parent[up];
          parent[p] = r;
          if (r >= lo) lower_first(r, first[p]);  // else r is a pointer into an earlier range
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t w = 0; w < map_words; ++w) firsts[w] = 0;
    for (int64_t k = 1; k < nt; ++k) {
      const auto [lo, hi] = range(k, R);
#pragma omp for schedule(static)
      for (int64_t p = lo; p < hi; ++p) {
        const cc_index_t up = parent[p];
        if (up < lo) {
          const cc_index_t r = parent[up];
          parent[p] = r;
          lower_first(r, first[p]);
        }
      }
    }
    for (const cc_index_t r : mine)
      __atomic_fetch_or(&firsts[first[r] >> 6], uint64_t{1} << (first[r] & 63), __ATOMIC_RELAXED);
#pragma omp barrier
    // Ranks: an exclusive prefix count of the bitmap, each thread over its share of words.
    const auto [w0, w1] = range(me, map_words);
    cc_index_t count = 0;
    for (int64_t w = w0; w < w1; ++w) count += static_cast<cc_index_t>(popcount64(firsts[w]));
    counted[me + 1] = count;
#pragma omp barrier
#pragma omp single
    for (int64_t k = 0; k < nt; ++k) counted[k + 1] += counted[k];
    count = counted[me];
    for (int64_t w = w0; w < w1; ++w) {
      before[w] = count;
      count += static_cast<cc_index_t>(popcount64(firsts[w]));
    }
#pragma omp barrier
    for (const cc_index_t r : mine) {
      const uint64_t f = first[r];
      label[r] = before[f >> 6] + static_cast<cc_index_t>(popcount64(firsts[f >> 6] & ((uint64_t{1} << (f & 63)) - 1))) + 1;
    }
  }
  t.n = counted[threads];
  if (stats) block_stats(in, t, roots, threads, *stats);

  // Write the labels, block by block: the block's OR-runs paint their labels into a row of W
  // entries (gaps keep stale values), and each voxel row of the block is that row masked by its bits.
#pragma omp parallel num_threads(threads)
  {
    std::vector<cc_index_t> painted(words * kWord + kPaintSlack);
#pragma omp for schedule(dynamic, 16)
    for (int64_t bk = 0; bk < t.blocks; ++bk) {
      const int64_t Z = bk / g.BY, Y = bk % g.BY;
      cc_index_t* lab = painted.data();
      paint_runs(t.start.get(), t.stop.get(), t.offset[bk], t.offset[bk + 1], [&](int64_t j) { return label[parent[j]]; }, lab);
      for (int64_t z = g.bz * Z; z < std::min(g.D, g.bz * Z + g.bz); ++z)
        for (int64_t y = 2 * Y; y < std::min(g.H, 2 * Y + 2); ++y)
          write_masked_row(bits.row(z * g.H + y), lab, g.W, out + (z * g.H + y) * g.W);
    }
#if defined(__SSE2__)
    _mm_sfence();
#endif
  }
  return t.n;
}

}  // namespace

// --- launchers (declared in bind_components.cpp) ----------------------------------------------------

template <typename T>
int64_t connected_components(const T* in, cc_index_t* out, const int64_t shape[3], int connectivity, bool binary,
                             ComponentTable<T>* stats) {
  const Grid g = grid_of(shape);
  if (binary && (connectivity == 26 || connectivity == 8))
    return label_blocks(in, out, g, connectivity, NonzeroKey<T>{}, stats);
  if (binary) {
    Runs<uint8_t> t;
    label_runs(in, g, connectivity, NonzeroKey<T>{}, t);
    write_labels(in, NonzeroKey<T>{}, t, out);
    if (stats) stats_of_runs(in, t, *stats);
    return t.n;
  }
  Runs<T> t;
  label_runs(in, g, connectivity, ValueKey<T>{}, t);
  write_labels(in, ValueKey<T>{}, t, out);
  if (stats) stats_of_runs(in, t, *stats);
  return t.n;
}

template <typename L, typename V>
uint64_t component_stats(const L* labels, const V* image, const int64_t shape[3], int64_t n, int64_t* count,
                         int64_t* bbox, V* value) {
  const int64_t H = shape[1], W = shape[2], rows = shape[0] * shape[1];
  // One table per thread over a static split of the rows (thread order is raster order), folded
  // into the outputs in thread order, so that each value is the one of the component's first voxel.
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), rows)));
  std::vector<ComponentTable<V>> parts(threads);
  std::vector<uint64_t> beyond(threads, 0);  // largest label above n seen by each thread
#pragma omp parallel num_threads(threads)
  {
    const int s = omp_get_thread_num();
    ComponentTable<V>& mine = parts[s];
    mine.reset(n);
    const int64_t lo = s * rows / threads, hi = (s + 1) * rows / threads;
    for (int64_t r = lo; r < hi; ++r) {
      const L* row = labels + r * W;
      for (int64_t x = 0, e; x < W; x = e) {
        const L l = row[x];
        for (e = x + 1; e < W && row[e] == l;) ++e;
        if (l == L(0)) continue;
        if (static_cast<uint64_t>(l) > static_cast<uint64_t>(n)) {
          beyond[s] = std::max<uint64_t>(beyond[s], l);
          continue;
        }
        add_run<V>(mine, static_cast<int64_t>(l) - 1, r / H, r % H, x, e, image ? image[r * W + x] : V(1));
      }
    }
  }
  fold_tables(parts, n, count, bbox, value);
  return *std::max_element(beyond.begin(), beyond.end());
}

template <typename T>
void remove_all_but_largest(const T* seg, T* out, const int64_t shape[3], const T* members, int64_t n_members,
                            T background, int connectivity) {
  const Grid g = grid_of(shape);
  if (g.D * g.H * g.W == 0) return;
  if constexpr (sizeof(T) <= 2) {
    std::vector<uint8_t> table(size_t{1} << (8 * sizeof(T)), 0);
    for (int64_t i = 0; i < n_members; ++i) table[members[i]] = 1;
    keep_largest(seg, out, g, TableKey<T>{table.data()}, background, connectivity);
  } else {
    keep_largest(seg, out, g, ListKey<T>{members, n_members}, background, connectivity);
  }
}

template <typename T>
void fill_holes(const T* mask, uint8_t* out, const int64_t shape[3], int connectivity) {
  const Grid g = grid_of(shape);
  if (g.D * g.H * g.W == 0) return;
  Runs<uint8_t> t;
  label_runs(mask, g, connectivity, ZeroKey<T>{}, t);
  const bool volumetric = row_stencil(connectivity).volumetric;
  const int64_t D = g.D, H = g.H, W = g.W;
  // Background components that reach the border of the volume (of each slice when in-plane) stay.
  std::vector<uint8_t> open(t.n + 1, 0);
  for (int64_t r = 0; r < t.rows; ++r) {
    const int64_t z = r / H, y = r % H;
    const int64_t first = t.offset[r], last = t.offset[r + 1];
    if (first == last) continue;
    if (y == 0 || y == H - 1 || (volumetric && (z == 0 || z == D - 1))) {
      for (int64_t j = first; j < last; ++j) open[t.parent[j]] = 1;
    } else {
      if (t.start[first] == 0) open[t.parent[first]] = 1;
      if (t.stop[last - 1] == W) open[t.parent[last - 1]] = 1;
    }
  }
#pragma omp parallel for schedule(dynamic, kRowChunk)
  for (int64_t r = 0; r < t.rows; ++r) {
    const T* in = mask + r * W;
    uint8_t* o = out + r * W;
    for (int64_t x = 0; x < W; ++x) o[x] = in[x] != T(0);
    for (int64_t j = t.offset[r]; j < t.offset[r + 1]; ++j)
      if (!open[t.parent[j]]) std::fill(o + t.start[j], o + t.stop[j], uint8_t{1});
  }
}

#define FASTSEG_INSTANTIATE_CC(T)                                                                          \
  template int64_t connected_components<T>(const T*, cc_index_t*, const int64_t[3], int, bool, ComponentTable<T>*);          \
  template void remove_all_but_largest<T>(const T*, T*, const int64_t[3], const T*, int64_t, T, int);    \
  template void fill_holes<T>(const T*, uint8_t*, const int64_t[3], int);                                \
  template uint64_t component_stats<uint8_t, T>(const uint8_t*, const T*, const int64_t[3], int64_t,     \
                                                int64_t*, int64_t*, T*);                                 \
  template uint64_t component_stats<uint16_t, T>(const uint16_t*, const T*, const int64_t[3], int64_t,   \
                                                 int64_t*, int64_t*, T*);                                \
  template uint64_t component_stats<uint32_t, T>(const uint32_t*, const T*, const int64_t[3], int64_t,   \
                                                 int64_t*, int64_t*, T*);                                \
  template uint64_t component_stats<uint64_t, T>(const uint64_t*, const T*, const int64_t[3], int64_t,   \
                                                 int64_t*, int64_t*, T*);
FASTSEG_INSTANTIATE_CC(uint8_t)
FASTSEG_INSTANTIATE_CC(uint16_t)
FASTSEG_INSTANTIATE_CC(uint32_t)
FASTSEG_INSTANTIATE_CC(uint64_t)
#undef FASTSEG_INSTANTIATE_CC

}  // namespace fastseg::cpu
