// Row-block labelling of masks under full connectivity: packing, extraction and linking of OR-runs,
// their statistics, and the write of the labels. The scheme and the data structures:
// components_blocks.h; the flatten and ranking step: components_rank.cpp.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "components_blocks.h"
#include "components_stats.h"
#include "kernels.h"
#include "scratch.h"

namespace fastseg::cpu::cc {

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

}  // namespace

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

  std::vector<std::vector<cc_index_t>> roots;  // per thread, the roots of its range of runs
  t.n = flatten_and_rank(t, threads, roots);
  if (stats) block_stats(in, t, roots, threads, *stats);
  const cc_index_t* parent = t.parent.get();
  const cc_index_t* label = t.label.get();  // at roots only

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

#define FASTSEG_INSTANTIATE_BLOCKS(T) \
  template int64_t label_blocks<NonzeroKey<T>, T>(const T*, cc_index_t*, Grid, int, const NonzeroKey<T>&, ComponentTable<T>*);
FASTSEG_INSTANTIATE_BLOCKS(uint8_t)
FASTSEG_INSTANTIATE_BLOCKS(uint16_t)
FASTSEG_INSTANTIATE_BLOCKS(uint32_t)
FASTSEG_INSTANTIATE_BLOCKS(uint64_t)
#undef FASTSEG_INSTANTIATE_BLOCKS

}  // namespace fastseg::cpu::cc
