// Step 4 of the row-block labeller (components_blocks.h): flatten the union-find of the OR-runs and
// number the components in raster order of their first voxels.
//
// The run labeller numbers roots in index order, because its runs are in raster order. The row-block
// labeller's runs are in block order, so each run carries a key instead (extract_block in
// components_blocks.cpp), which orders components as their first voxels do; the root of a component
// ends with the smallest key of its runs, and the rank of that key among all roots' keys is the
// label. Keys are voxel indices, so a bitmap over the volume ranks them: set one bit per root, count
// the bits before each word (an exclusive prefix sum, in parallel over words), and a root's label is
// that count plus the bits before its own in its word, plus 1.
#include <omp.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "components_blocks.h"
#include "scratch.h"

namespace fastseg::cpu::cc {

// Flatten, in parallel over ranges of runs. (1) Each thread resolves its range in index order:
// parent[p] < p, so parent[parent[p]] is already a root of the range, or a pointer into an earlier
// range. (2) Range by range, pointers into earlier ranges (by then resolved) take one more hop.
// Once a run's root is known, the root takes the smaller of its key and the run's (extract_block):
// an atomic minimum, rarely contended, as keys grow with the run index. (3) The roots' final keys,
// ranked in raster order through a bitmap, are their labels; the write pass looks every run's
// label up at its root.
int64_t flatten_and_rank(BlockRuns& t, int threads, std::vector<std::vector<cc_index_t>>& roots) {
  const BlockGrid& g = t.g;
  cc_index_t* parent = t.parent.get();
  uint64_t* first = t.first.get();
  const int64_t R = t.total;
  const int64_t voxels = g.D * g.H * g.W, map_words = (voxels + kWord - 1) / kWord;
  Scratch<uint64_t> firsts(map_words);
  Scratch<cc_index_t> before(map_words);  // roots in earlier words
  t.label.reset(R);
  cc_index_t* label = t.label.get();  // at roots only
  roots.assign(threads, {});
  std::vector<cc_index_t> counted(threads + 1, 0);  // per thread, roots in its words of the bitmap
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
  return counted[threads];
}

}  // namespace fastseg::cpu::cc
