// Resampling bodies: the per-sample math of nnU-Net's `resample_data_or_seg_to_shape`.
//
// What nnU-Net computes (through skimage.transform.resize(mode='edge', anti_aliasing=False) and
// scipy.ndimage.map_coordinates(mode='nearest')), restated as separable 1D operations:
//
//   1. Sample positions ("align corners = False"). Output index i of an axis resized from n_in to
//      n_out samples reads the input at coordinate
//          c(i) = (i + 0.5) * (n_in / n_out) - 0.5                                   (source_coord)
//
//   2. Interpolation of order k evaluates a degree-k B-spline whose coefficients reproduce the
//      samples. Order 0 and 1 need no coefficients (nearest, linear). Order 3 does: the samples are
//      first extended by kSplinePad copies of the edge value on each side (scipy pads so for
//      mode='nearest'), then the cubic B-spline prefilter turns samples s into coefficients b by the
//      recursive filter with pole z = sqrt(3) - 2 and gain 6, mirror boundary conditions:
//
//          causal:      b+[0] = sum_k z^k s[k]               (mirror init, exact)
//                       b+[j] = s[j] + z * b+[j-1]
//          anticausal:  b[N-1] = z / (z^2 - 1) * (b+[N-1] + z * b+[N-2])
//                       b[j]   = z * (b[j+1] - b+[j])
//
//      A value at coordinate c is then sum_{t=0..3} b[floor(c) - 1 + t] * B3(c - floor(c) ... ),
//      taps given by cubic_weights (the padded coordinate is c + kSplinePad).
//
//   3. Because the tensor-product spline factorises, resampling a volume equals resampling it along
//      one axis after another; each axis pass reads (outer, n_in, inner) and writes
//      (outer, n_out, inner). skimage finally clips the result to the input's [min, max] (per
//      resize call: per channel, or per slice when the out-of-plane axis is resampled separately).
//
//   4. Segmentations are not interpolated as numbers. nnU-Net resamples the one-hot mask of each
//      label with order 1 and picks a label per voxel from those scores (SegVote documents the two
//      rules it uses). Per output voxel only the labels of its (up to 8) linear-interpolation
//      corners score above zero, so one pass over the output computes the same result as one
//      resize per label: sum the corner weights per distinct label and vote (seg_vote).
#pragma once

#include <cmath>

#include "fastseg/hd.h"

namespace fastseg {

// Edge samples added on each side before the order-3 prefilter (scipy's value for mode='nearest').
constexpr int64_t kSplinePad = 12;
// Pole of the cubic B-spline prefilter, sqrt(3) - 2.
constexpr double kCubicPole = -0.26794919243112270;
// Terms of the causal initial sum after which z^k is below 1e-17.
constexpr int64_t kCubicHorizon = 30;
// Most taps one interpolation uses along one axis.
constexpr int kMaxTaps = 4;

// Input coordinate read by output index i, with scale = n_in / n_out.
FASTSEG_HD double source_coord(int64_t i, double scale) { return (static_cast<double>(i) + 0.5) * scale - 0.5; }

// Index into the original line for position p of the edge-padded line (length n + 2 * kSplinePad).
FASTSEG_HD int64_t padded_source_index(int64_t p, int64_t n) { return clamp_value<int64_t>(p - kSplinePad, 0, n - 1); }

// Taps of an interpolation of `order` (0, 1 or 3) at input coordinate `coord` on a line of n
// samples. Writes the tap indices (into the line for orders 0/1, into the padded coefficient line
// of length n + 2 * kSplinePad for order 3) and their weights; returns the number of taps.
FASTSEG_HD int sample_taps(int order, double coord, int64_t n, int64_t* idx, double* w) {
  if (order == 0) {
    // scipy rounds half up for even orders: floor(c + 0.5).
    idx[0] = clamp_value<int64_t>(static_cast<int64_t>(floor(coord + 0.5)), 0, n - 1);
    w[0] = 1.0;
    return 1;
  }
  if (order == 1) {
    const double f = floor(coord);
    const double t = coord - f;
    const int64_t i0 = static_cast<int64_t>(f);
    idx[0] = clamp_value<int64_t>(i0, 0, n - 1);
    idx[1] = clamp_value<int64_t>(i0 + 1, 0, n - 1);
    w[0] = 1.0 - t;
    w[1] = t;
    return 2;
  }
  // order 3: cubic B-spline on the padded coefficient line.
  const double c = coord + static_cast<double>(kSplinePad);
  const double f = floor(c);
  const double t = c - f;
  const double t2 = t * t;
  const double t3 = t2 * t;
  const double u = 1.0 - t;
  const int64_t start = static_cast<int64_t>(f) - 1;
  const int64_t last = n + 2 * kSplinePad - 1;
  w[0] = u * u * u / 6.0;
  w[1] = (4.0 - 6.0 * t2 + 3.0 * t3) / 6.0;
  w[2] = (1.0 + 3.0 * t + 3.0 * t2 - 3.0 * t3) / 6.0;
  w[3] = t3 / 6.0;
  for (int k = 0; k < 4; ++k) idx[k] = clamp_value<int64_t>(start + k, 0, last);
  return 4;
}

// --- cubic B-spline prefilter, one line of N padded samples at `stride` ---------------------------

// b+[0] for mirror boundaries: exact sum over the mirrored line when it is short, else truncated
// where z^k no longer matters in double precision. `s` holds samples at multiples of `stride`.
template <typename T>
FASTSEG_HD double cubic_causal_init(const T* s, int64_t N, int64_t stride) {
  const double z = kCubicPole;
  if (N > kCubicHorizon) {
    double acc = s[0];
    double zk = z;
    for (int64_t k = 1; k < kCubicHorizon; ++k) {
      acc += zk * static_cast<double>(s[k * stride]);
      zk *= z;
    }
    return acc;
  }
  // Mirror extension s[-k] = s[k], s[N-1+k] = s[N-1-k], summed in closed form.
  const double zn1 = pow(z, static_cast<double>(N - 1));
  double acc = static_cast<double>(s[0]) + zn1 * static_cast<double>(s[(N - 1) * stride]);
  double zk = z;
  for (int64_t k = 1; k < N - 1; ++k) {
    acc += zk * (static_cast<double>(s[k * stride]) + zn1 * static_cast<double>(s[(N - 1 - k) * stride]));
    zk *= z;
  }
  return acc / (1.0 - zn1 * zn1);
}

// The prefilter in place on `count` lines of N samples each. Line k starts at c + k * line_stride and
// its samples lie `sample_stride` apart. Samples go in, B-spline coefficients come out. The loops run
// sample-outer, line-inner so that a CPU block of adjacent lines (line_stride 1) vectorises; one GPU
// thread passes count = 1.
template <typename T>
FASTSEG_HD void cubic_prefilter_lines(T* c, int64_t N, int64_t count, int64_t line_stride, int64_t sample_stride) {
  if (N < 2) return;
  const double z = kCubicPole;
  const double gain = (1.0 - z) * (1.0 - 1.0 / z);  // 6 for the cubic spline
  for (int64_t j = 0; j < N; ++j)
    for (int64_t k = 0; k < count; ++k) c[k * line_stride + j * sample_stride] *= static_cast<T>(gain);
  for (int64_t k = 0; k < count; ++k) c[k * line_stride] = static_cast<T>(cubic_causal_init(c + k * line_stride, N, sample_stride));
  for (int64_t j = 1; j < N; ++j) {
    T* row = c + j * sample_stride;
    const T* prev = row - sample_stride;
    for (int64_t k = 0; k < count; ++k)
      row[k * line_stride] = static_cast<T>(row[k * line_stride] + z * prev[k * line_stride]);
  }
  {
    T* last = c + (N - 1) * sample_stride;
    const T* second = last - sample_stride;
    for (int64_t k = 0; k < count; ++k)
      last[k * line_stride] = static_cast<T>(z / (z * z - 1.0) * (last[k * line_stride] + z * second[k * line_stride]));
  }
  for (int64_t j = N - 2; j >= 0; --j) {
    T* row = c + j * sample_stride;
    const T* next = row + sample_stride;
    for (int64_t k = 0; k < count; ++k)
      row[k * line_stride] = static_cast<T>(z * (next[k * line_stride] - row[k * line_stride]));
  }
}

// Interpolated value from n taps of a line whose samples (or coefficients) lie `stride` apart.
template <typename T>
FASTSEG_HD double gather_taps(const T* line, int64_t stride, const int64_t* idx, const double* w, int n) {
  double acc = 0.0;
  for (int k = 0; k < n; ++k) acc += w[k] * static_cast<double>(line[idx[k] * stride]);
  return acc;
}

// --- segmentation vote ----------------------------------------------------------------------------

// How a voxel's label is chosen from the weights of its interpolation corners.
enum class SegVote : int {
  // batchgenerators' resize_segmentation (nnU-Net's in-plane and 3D path): the label with the
  // largest summed weight; an exact tie goes to the nearest-neighbour label if it is among the
  // tied, else to the smallest tied label.
  kArgmaxNearest = 0,
  // nnU-Net's out-of-plane step of the separate-z path: labels in ascending order overwrite where
  // their weight exceeds 0.5 (np.round(w) > 0.5), so the largest such label wins; where none does,
  // 0 stays (or, when 0 is no label of the input, the heaviest label, so that no new label appears).
  kThresholdStrict = 1,
};

// Inside a structure every corner carries the same label; it then wins under either vote rule.
template <typename L>
FASTSEG_HD bool corners_uniform(const L* labels, int n) {
  bool uniform = true;
  for (int a = 1; a < n; ++a) uniform = uniform && (labels[a] == labels[0]);
  return uniform;
}

// Label of one output voxel from its n (<= 8) corners `labels` with weights `w` (summed per label in
// corner order, as scipy sums them). `nearest` is the order-0 sample at the same point.
template <typename L>
FASTSEG_HD L seg_vote(const L* labels, const double* w, int n, L nearest, SegVote mode, bool zero_is_label) {
  if (corners_uniform(labels, n)) return labels[0];
  double best = -1.0;
  L best_label = labels[0];
  double nearest_score = 0.0;
  bool have_winner = false;
  L winner = 0;
  for (int a = 0; a < n; ++a) {
    bool seen = false;
    for (int b = 0; b < a; ++b) seen = seen || (labels[b] == labels[a]);
    if (seen) continue;
    double sum = 0.0;
    for (int b = a; b < n; ++b) sum += labels[b] == labels[a] ? w[b] : 0.0;
    if (labels[a] == nearest) nearest_score = sum;
    if (sum > best || (sum == best && labels[a] < best_label)) {
      best = sum;
      best_label = labels[a];
    }
    if (sum > 0.5 && (!have_winner || labels[a] > winner)) {
      winner = labels[a];
      have_winner = true;
    }
  }
  if (mode == SegVote::kArgmaxNearest) return (nearest_score == best && best > 0.0) ? nearest : best_label;
  if (have_winner) return winner;
  return zero_is_label ? L(0) : best_label;
}

}  // namespace fastseg
