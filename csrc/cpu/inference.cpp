// CPU launchers for inference: tile accumulation, weight normalisation and the fused export. The
// per-element math is in fastseg/inference.h (read its header comment for what nnU-Net computes);
// here only how the work is split over threads.
//
// accumulate_tiles: one job per block of kAccRows image rows (z, y0..y0+kAccRows) inside the bounding
//   box of the batch's tiles. The thread owning a block adds, for each tile that crosses it in batch
//   order, that tile's rows of every channel and of the weight map. Blocks are disjoint, so
//   overlapping tiles never race, and every voxel sums its tiles in batch order whatever the thread
//   count. A tile's rows of one block are contiguous, so each channel is one sequential read (few
//   concurrent memory streams), and the block's importance rows stay in cache across channels.
//
// export_segmentation: one job per block of kRows output rows of one output plane d. Per class:
//   z-sums   p0[s, x]   = sum_a wz[a] L[c, iz[a], row_s, x]   for the input rows row_s the block needs
//   y-sums   p1[r, x]   = sum_b wy[b] p0[slot(r, b), x]        for the block's output rows r
//   x-sums   v[r, x']   = sum_e wx[e] p1[r, ix[x', e]]          one output row at a time
//   then the running argmax (or region label) of the block, or a store into the probabilities.
//   The z- and y-sums run over whole input rows (contiguous, vectorised); thread memory is a few
//   rows, independent of the class count.
//
// count_nonfinite: the up-front NaN/Inf check of the float inputs of fastseg.ops (resample, export),
//   one parallel read of the array.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastseg/inference.h"
#include "fastseg/normalize.h"
#include "fastseg/resample.h"

namespace fastseg::cpu {
namespace {

// Output rows of one export job.
constexpr int64_t kRows = 16;
// Image rows of one accumulation job.
constexpr int64_t kAccRows = 16;

// --- export: per-axis tap tables ------------------------------------------------------------------

// Taps of one axis for every output index, weights rounded to float32 as the CUDA kernel rounds them.
// Structure of arrays: tap k of output i is idx[k][i] with weight w[k][i].
struct AxisTable {
  std::vector<int64_t> idx[kMaxTaps];
  std::vector<float> w[kMaxTaps];
  int taps = 1;
};

AxisTable make_table(int order, int64_t n_in, int64_t n_out) {
  AxisTable t;
  const double scale = static_cast<double>(n_in) / static_cast<double>(n_out);
  for (int k = 0; k < kMaxTaps; ++k) {
    t.idx[k].assign(n_out, 0);
    t.w[k].assign(n_out, 0.0f);
  }
  for (int64_t i = 0; i < n_out; ++i) {
    int64_t idx[kMaxTaps];
    double w[kMaxTaps];
    t.taps = sample_taps(order, source_coord(i, scale), n_in, idx, w);
    for (int k = 0; k < t.taps; ++k) {
      t.idx[k][i] = idx[k];
      t.w[k][i] = static_cast<float>(w[k]);
    }
  }
  return t;
}

// z-sums of one input row: dst[x] = sum_a wz[a] * L(z_a, x) over NZ planes, x < n.
template <int NZ, bool kWeighted, typename T>
void z_sums(float* __restrict__ dst, const T* const* rows, const float* const* weight_rows, const float* wz,
            int64_t n) {
  float w[NZ];
  const T* src[NZ];
  const float* weight[NZ];
  for (int a = 0; a < NZ; ++a) {
    w[a] = wz[a];
    src[a] = rows[a];
    weight[a] = kWeighted ? weight_rows[a] : nullptr;
  }
#pragma omp simd
  for (int64_t x = 0; x < n; ++x) {
    float v[NZ];
    for (int a = 0; a < NZ; ++a) v[a] = kWeighted ? normalized_logit(src[a][x], weight[a][x]) : to_float(src[a][x]);
    dst[x] = combine_taps(v, w, NZ);
  }
}

// y-sums of one output row from NY rows of p0.
template <int NY>
void y_sums(float* __restrict__ dst, const float* const* rows, const float* wy, int64_t n) {
  float w[NY];
  const float* src[NY];
  for (int b = 0; b < NY; ++b) {
    w[b] = wy[b];
    src[b] = rows[b];
  }
#pragma omp simd
  for (int64_t x = 0; x < n; ++x) {
    float v[NY];
    for (int b = 0; b < NY; ++b) v[b] = src[b][x];
    dst[x] = combine_taps(v, w, NY);
  }
}

// x-sums of one output row: dst[x'] = sum_e wx[e][x'] * src[ix[e][x']] (a gather per tap).
template <int NX>
void x_sums(float* __restrict__ dst, const float* __restrict__ src, const AxisTable& tx, int64_t n_out) {
  const int64_t* idx[NX];
  const float* wx[NX];
  for (int e = 0; e < NX; ++e) {
    idx[e] = tx.idx[e].data();
    wx[e] = tx.w[e].data();
  }
  for (int64_t x = 0; x < n_out; ++x) {
    float v[NX], w[NX];
    for (int e = 0; e < NX; ++e) {
      v[e] = src[idx[e][x]];
      w[e] = wx[e][x];
    }
    dst[x] = combine_taps(v, w, NX);
  }
}

template <typename T, bool kWeighted>
void z_sums_dispatch(int nz, float* dst, const T* const* rows, const float* const* weight_rows, const float* wz,
                     int64_t n) {
  if (nz == 1) return z_sums<1, kWeighted>(dst, rows, weight_rows, wz, n);
  z_sums<2, kWeighted>(dst, rows, weight_rows, wz, n);
}

// Geometry and outputs of one export, shared by all jobs.
template <typename T, typename L>
struct ExportJob {
  const T* logits;       // [C, D, H, W]
  const float* weights;  // [D, H, W] or null
  int64_t C, D, H, W;
  int64_t Do, Ho, Wo;
  const AxisTable* tables;  // z, y, x
  ExportMode mode;
  const int32_t* region_labels;  // [C] for kRegions
  L* labels;                     // [Do, Ho, Wo]
  float* probabilities;          // [C, Do, Ho, Wo] or null
};

// Thread-local rows of one job.
struct Scratch {
  std::vector<int64_t> in_rows;  // input rows the block reads, ascending, unique
  std::vector<int> slot;         // [kRows, kMaxTaps]: index into in_rows of each y tap
  std::vector<float> p0;         // [in_rows, W]
  std::vector<float> p1;         // [kRows, W]
  std::vector<float> v;          // [Wo]
  std::vector<float> best;       // [kRows, Wo]; then the softmax maxima
  std::vector<float> sum;        // [kRows, Wo]: softmax denominators
  std::vector<int32_t> label;    // [kRows, Wo]
};

template <typename T, typename L>
void run_export_block(const ExportJob<T, L>& j, int64_t d, int64_t y0, int64_t y1, Scratch& s) {
  const AxisTable& tz = j.tables[0];
  const AxisTable& ty = j.tables[1];
  const AxisTable& tx = j.tables[2];
  const int64_t rows = y1 - y0;
  const int64_t plane_in = j.H * j.W;
  const int64_t plane_out = j.Ho * j.Wo;
  const int64_t volume_out = j.Do * plane_out;

  // Input rows this block needs (the y taps ascend with the output row) and each tap's slot.
  s.in_rows.clear();
  for (int64_t r = 0; r < rows; ++r)
    for (int b = 0; b < ty.taps; ++b) {
      const int64_t row = ty.idx[b][y0 + r];
      if (s.in_rows.empty() || s.in_rows.back() != row) s.in_rows.push_back(row);
      s.slot[r * kMaxTaps + b] = static_cast<int>(s.in_rows.size()) - 1;
    }
  const int64_t n_in_rows = static_cast<int64_t>(s.in_rows.size());
  if (static_cast<int64_t>(s.p0.size()) < n_in_rows * j.W) s.p0.resize(n_in_rows * j.W);

  int64_t iz[kMaxTaps];
  float wz[kMaxTaps];
  for (int a = 0; a < tz.taps; ++a) {
    iz[a] = tz.idx[a][d];
    wz[a] = tz.w[a][d];
  }

  for (int64_t c = 0; c < j.C; ++c) {
    // z-sums of the needed input rows.
    for (int64_t k = 0; k < n_in_rows; ++k) {
      const T* src[kMaxTaps];
      const float* wsrc[kMaxTaps];
      for (int a = 0; a < tz.taps; ++a) {
        src[a] = j.logits + (c * j.D + iz[a]) * plane_in + s.in_rows[k] * j.W;
        wsrc[a] = j.weights ? j.weights + iz[a] * plane_in + s.in_rows[k] * j.W : nullptr;
      }
      float* dst = s.p0.data() + k * j.W;
      if (j.weights)
        z_sums_dispatch<T, true>(tz.taps, dst, src, wsrc, wz, j.W);
      else
        z_sums_dispatch<T, false>(tz.taps, dst, src, wsrc, wz, j.W);
    }
    // y-sums, x-sums and the label update, one output row at a time.
    for (int64_t r = 0; r < rows; ++r) {
      const float* src[kMaxTaps];
      for (int b = 0; b < ty.taps; ++b) src[b] = s.p0.data() + s.slot[r * kMaxTaps + b] * j.W;
      float* p1 = s.p1.data() + r * j.W;
      float wy[kMaxTaps];
      for (int b = 0; b < ty.taps; ++b) wy[b] = ty.w[b][y0 + r];
      if (ty.taps == 1)
        y_sums<1>(p1, src, wy, j.W);
      else
        y_sums<2>(p1, src, wy, j.W);
      float* v = s.v.data();
      if (tx.taps == 1)
        x_sums<1>(v, p1, tx, j.Wo);
      else
        x_sums<2>(v, p1, tx, j.Wo);

      float* __restrict__ best = s.best.data() + r * j.Wo;
      int32_t* __restrict__ label = s.label.data() + r * j.Wo;
      const int32_t ci = static_cast<int32_t>(c);
      if (j.mode == ExportMode::kArgmax) {
#pragma omp simd
        for (int64_t x = 0; x < j.Wo; ++x) argmax_update(v[x], ci, best[x], label[x]);
      } else {
        const int32_t region = j.region_labels[c];
        if (c == 0) std::fill(label, label + j.Wo, 0);
        for (int64_t x = 0; x < j.Wo; ++x) label[x] = region_update(v[x], region, label[x]);
      }
      if (j.probabilities) {
        float* p = j.probabilities + c * volume_out + d * plane_out + (y0 + r) * j.Wo;
        std::copy(v, v + j.Wo, p);
      }
    }
  }

  // Probabilities of the block: a softmax across classes per voxel (softmax_strided's steps, run
  // class-outer over the block's contiguous voxels), or a sigmoid per class.
  if (j.probabilities) {
    float* p = j.probabilities + d * plane_out + y0 * j.Wo;
    const int64_t n = rows * j.Wo;
    if (j.mode == ExportMode::kArgmax) {
      float* __restrict__ m = s.best.data();  // the labels are final: reuse the block's buffers
      float* __restrict__ sum = s.sum.data();
      std::copy(p, p + n, m);
      for (int64_t c = 1; c < j.C; ++c) {
        const float* __restrict__ pc = p + c * volume_out;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) m[i] = softmax_max(m[i], pc[i]);
      }
      std::fill(sum, sum + n, 0.0f);
      for (int64_t c = 0; c < j.C; ++c) {
        float* __restrict__ pc = p + c * volume_out;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          pc[i] = softmax_numerator(pc[i], m[i]);
          sum[i] += pc[i];
        }
      }
      for (int64_t c = 0; c < j.C; ++c) {
        float* __restrict__ pc = p + c * volume_out;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) pc[i] /= sum[i];
      }
    } else {
      for (int64_t c = 0; c < j.C; ++c) {
        float* __restrict__ pc = p + c * volume_out;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) pc[i] = sigmoid(pc[i]);
      }
    }
  }

  L* out = j.labels + d * plane_out + y0 * j.Wo;
  for (int64_t i = 0; i < rows * j.Wo; ++i) out[i] = static_cast<L>(s.label[i]);
}

}  // namespace

template <typename T>
void accumulate_tiles(float* acc, float* weights, const T* tiles, const int64_t* offsets, const float* importance,
                      const int64_t image[4], const int64_t tile[5]) {
  const int64_t C = image[0], D = image[1], H = image[2], W = image[3];
  const int64_t B = tile[0], td = tile[2], th = tile[3], tw = tile[4];
  if (B == 0 || td == 0 || th == 0 || tw == 0) return;
  // Bounding box of the batch in (z, y): the rows any tile touches.
  int64_t z_lo = D, z_hi = 0, y_lo = H, y_hi = 0;
  for (int64_t b = 0; b < B; ++b) {
    z_lo = std::min(z_lo, offsets[b * 3]);
    z_hi = std::max(z_hi, offsets[b * 3] + td);
    y_lo = std::min(y_lo, offsets[b * 3 + 1]);
    y_hi = std::max(y_hi, offsets[b * 3 + 1] + th);
  }
  const int64_t blocks_per_plane = (y_hi - y_lo + kAccRows - 1) / kAccRows;
  const int64_t jobs = (z_hi - z_lo) * blocks_per_plane;
  const int64_t tile_voxels = td * th * tw;
  const int64_t volume = D * H * W;
  // Dynamic: tiles need not cover the bounding box evenly (the last batch of a sliding window).
  // What a row sums does not depend on which thread owns it.
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t z = z_lo + job / blocks_per_plane;
    const int64_t y0 = y_lo + (job % blocks_per_plane) * kAccRows;
    const int64_t y1 = std::min(y_hi, y0 + kAccRows);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t* o = offsets + b * 3;
      const int64_t tz = z - o[0];
      const int64_t first = std::max(y0, o[1]), last = std::min(y1, o[1] + th);  // rows [first, last)
      if (tz < 0 || tz >= td || first >= last) continue;
      // The tile's rows of this block are contiguous in the tile; the image rows lie W apart.
      const int64_t tile_row0 = (tz * th + (first - o[1])) * tw;
      const int64_t image_row0 = (z * H + first) * W + o[2];
      for (int64_t c = 0; c < C; ++c) {
        const T* src = tiles + (b * C + c) * tile_voxels + tile_row0;
        float* dst = acc + c * volume + image_row0;
        for (int64_t y = 0; y < last - first; ++y)
          accumulate_segment(dst + y * W, src + y * tw, importance ? importance + tile_row0 + y * tw : nullptr, tw);
      }
      if (weights)
        for (int64_t y = 0; y < last - first; ++y)
          weight_segment(weights + image_row0 + y * W, importance ? importance + tile_row0 + y * tw : nullptr, tw);
    }
  }
}

void normalize_accumulated(float* acc, const float* weights, int64_t C, int64_t voxels) {
  if (C == 0 || voxels == 0) return;
  // Blocks of one channel, so that each thread streams through contiguous memory.
  constexpr int64_t kBlock = 16384;
  const int64_t blocks = (voxels + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < blocks; ++k) {
      float* __restrict__ a = acc + c * voxels + k * kBlock;
      const float* __restrict__ w = weights + k * kBlock;
      const int64_t n = std::min(kBlock, voxels - k * kBlock);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = normalized_logit(a[i], w[i]);
    }
}

template <typename T, typename L>
void export_segmentation(const T* logits, const float* weights, const int64_t in_shape[4], const int64_t out_shape[3],
                         const int orders[3], ExportMode mode, const int32_t* region_labels, L* labels,
                         float* probabilities) {
  const int64_t C = in_shape[0];
  const int64_t Do = out_shape[0], Ho = out_shape[1], Wo = out_shape[2];
  if (C == 0 || Do == 0 || Ho == 0 || Wo == 0) return;
  AxisTable tables[3];
  for (int a = 0; a < 3; ++a) tables[a] = make_table(orders[a], in_shape[a + 1], out_shape[a]);
  const ExportJob<T, L> job{logits, weights,      in_shape[0], in_shape[1],   in_shape[2], in_shape[3], Do, Ho,
                            Wo,     tables,       mode,        region_labels, labels,      probabilities};
  const int64_t blocks_per_plane = (Ho + kRows - 1) / kRows;
  const int64_t jobs = Do * blocks_per_plane;
#pragma omp parallel
  {
    Scratch s;
    s.in_rows.reserve(kRows * kMaxTaps);
    s.slot.assign(kRows * kMaxTaps, 0);
    s.p1.assign(kRows * job.W, 0.0f);
    s.v.assign(Wo, 0.0f);
    s.best.assign(kRows * Wo, 0.0f);
    s.sum.assign(probabilities ? kRows * Wo : 0, 0.0f);
    s.label.assign(kRows * Wo, 0);
#pragma omp for schedule(static)
    for (int64_t k = 0; k < jobs; ++k) {
      const int64_t d = k / blocks_per_plane;
      const int64_t y0 = (k % blocks_per_plane) * kRows;
      run_export_block(job, d, y0, std::min(Ho, y0 + kRows), s);
    }
  }
}

template <typename T>
int64_t count_nonfinite(const T* x, int64_t n) {
  int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count)
  for (int64_t i = 0; i < n; ++i) count += !is_finite_value(to_float(x[i]));
  return count;
}

template int64_t count_nonfinite<float>(const float*, int64_t);
template int64_t count_nonfinite<Half>(const Half*, int64_t);
template int64_t count_nonfinite<BFloat16>(const BFloat16*, int64_t);

#define FASTSEG_INSTANTIATE_ACC(T)                                                                        \
  template void accumulate_tiles<T>(float*, float*, const T*, const int64_t*, const float*, const int64_t[4], \
                                    const int64_t[5]);
FASTSEG_INSTANTIATE_ACC(float)
FASTSEG_INSTANTIATE_ACC(Half)
FASTSEG_INSTANTIATE_ACC(BFloat16)
#undef FASTSEG_INSTANTIATE_ACC

#define FASTSEG_INSTANTIATE_EXPORT(T, L)                                                                          \
  template void export_segmentation<T, L>(const T*, const float*, const int64_t[4], const int64_t[3], const int[3], \
                                          ExportMode, const int32_t*, L*, float*);
FASTSEG_INSTANTIATE_EXPORT(float, uint8_t)
FASTSEG_INSTANTIATE_EXPORT(float, uint16_t)
FASTSEG_INSTANTIATE_EXPORT(Half, uint8_t)
FASTSEG_INSTANTIATE_EXPORT(Half, uint16_t)
FASTSEG_INSTANTIATE_EXPORT(BFloat16, uint8_t)
FASTSEG_INSTANTIATE_EXPORT(BFloat16, uint16_t)
#undef FASTSEG_INSTANTIATE_EXPORT

}  // namespace fastseg::cpu
