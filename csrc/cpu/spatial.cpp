// OpenMP launcher of the spatial augmentation; the per-sample formulas are in fastseg/spatial.h
// (geometry, loop order, flat axes and the noise generator are explained there).
#include "spatial.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace fastseg::cpu {
namespace {

// A margin (in voxels) that keeps float32 rounding of b + x s away from the box's faces.
constexpr double kEdge = 1e-3;

// Whether the transform is a pure integer translation (then the patch is a copy of the box).
bool is_integer_shift(const AffinePatch& p) {
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) {
      if (p.m[r][c] != (r == c ? 1.0 : 0.0)) return false;
    }
    if (p.m[r][3] != std::floor(p.m[r][3])) return false;
  }
  return true;
}

// The samples x of a row p(x) = b + x s (clipped to [0, n)) whose 8 neighbours all lie in the box
// (inner = true: the unchecked body may run there), or outside of which none does (inner = false:
// the image is 0 and the label `outside` there). flat[a]: the axis does not move along the row and sits
// on an integer, so only floor(p) = p is read on it. The bounds are conservative by a margin in p and
// by one sample in x, so float32 rounding of b + x s never crosses them.
void row_span(const double* b, const double* s, const bool* flat, const Box3& box, int64_t n, bool inner,
              int64_t* first, int64_t* last) {
  double lo_x = 0.0, hi_x = static_cast<double>(n);  // x in [lo_x, hi_x)
  for (int a = 0; a < 3; ++a) {
    double lo = static_cast<double>(box.lo[a]), hi = static_cast<double>(box.hi[a]) - 1.0;  // lo <= p <= hi
    if (!flat[a]) {
      lo += inner ? kEdge : -1.0 - kEdge;
      hi += inner ? -kEdge : 1.0 + kEdge;
    }
    if (s[a] == 0.0) {
      if (!(b[a] >= lo && b[a] <= hi)) lo_x = hi_x;  // never inside
      continue;
    }
    double x0 = (lo - b[a]) / s[a], x1 = (hi - b[a]) / s[a];
    if (x0 > x1) std::swap(x0, x1);
    lo_x = std::max(lo_x, inner ? std::ceil(x0) + 1.0 : std::floor(x0) - 1.0);
    hi_x = std::min(hi_x, inner ? std::floor(x1) : std::ceil(x1) + 2.0);
  }
  if (!(lo_x < hi_x)) {
    *first = *last = 0;
    return;
  }
  *first = static_cast<int64_t>(lo_x);
  *last = static_cast<int64_t>(hi_x);
}

// Adds std * N(0, 1) to row[0..n) whose first element has the flat patch index i0.
void add_noise(float* row, int64_t n, int64_t i0, float std, uint64_t seed) {
  int64_t x = 0;
  if (i0 & 1) {  // the row starts on the second element of a pair
    float n0, n1;
    normal_pair(seed, static_cast<uint64_t>(i0 >> 1), &n0, &n1);
    row[0] += std * n1;
    x = 1;
  }
  for (; x + 1 < n; x += 2) {
    float n0, n1;
    normal_pair(seed, static_cast<uint64_t>((i0 + x) >> 1), &n0, &n1);
    row[x] += std * n0;
    row[x + 1] += std * n1;
  }
  if (x < n) {
    float n0, n1;
    normal_pair(seed, static_cast<uint64_t>((i0 + x) >> 1), &n0, &n1);
    row[x] += std * n0;
  }
}

}  // namespace

template <typename L>
void affine_patch(const float* in, int64_t channels, const int64_t* in_shape, const L* seg_in, float* out,
                  int16_t* seg_out, const AffinePatch& p) {
  const int64_t P0 = p.patch[0], P1 = p.patch[1], P2 = p.patch[2];
  const int64_t rows = P0 * P1;
  if (rows == 0 || P2 == 0 || channels == 0) return;
  const int64_t sy = in_shape[2], sz = in_shape[1] * in_shape[2], sc = in_shape[0] * sz;
  const int64_t out_c = rows * P2;
  const bool copy = is_integer_shift(p);
  double step[3] = {p.m[0][2], p.m[1][2], p.m[2][2]};
  bool moves[3] = {step[0] != 0.0, step[1] != 0.0, step[2] != 0.0};

#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t z = row / P1, y = row % P1;
    double b[3];
    for (int a = 0; a < 3; ++a) b[a] = p.m[a][0] * z + p.m[a][1] * y + p.m[a][3];
    float* dst0 = out + row * P2;
    int16_t* seg_dst = seg_out != nullptr ? seg_out + row * P2 : nullptr;
    if (copy) {
      // A pure translation: the in-box part of the row is a copy, the rest padding.
      const int64_t iz = static_cast<int64_t>(b[0]), iy = static_cast<int64_t>(b[1]), ix = static_cast<int64_t>(b[2]);
      const bool row_in = iz >= p.box.lo[0] && iz < p.box.hi[0] && iy >= p.box.lo[1] && iy < p.box.hi[1];
      const int64_t first = row_in ? std::clamp<int64_t>(p.box.lo[2] - ix, 0, P2) : 0;
      const int64_t last = row_in ? std::clamp<int64_t>(p.box.hi[2] - ix, first, P2) : 0;
      for (int64_t c = 0; c < channels; ++c) {
        float* dst = dst0 + c * out_c;
        std::fill(dst, dst + first, 0.0f);
        if (last > first) std::memcpy(dst + first, in + c * sc + iz * sz + iy * sy + ix + first, (last - first) * sizeof(float));
        std::fill(dst + last, dst + P2, 0.0f);
      }
      if (seg_dst != nullptr) {
        std::fill(seg_dst, seg_dst + first, p.outside);
        const L* src = seg_in + iz * sz + iy * sy + ix;
        for (int64_t x = first; x < last; ++x) seg_dst[x] = static_cast<int16_t>(src[x]);
        std::fill(seg_dst + last, seg_dst + P2, p.outside);
      }
    } else {
      bool flat[3];
      for (int a = 0; a < 3; ++a) flat[a] = !moves[a] && b[a] == std::floor(b[a]);
      int64_t first, last, touch_first, touch_last;
      row_span(b, step, flat, p.box, P2, true, &first, &last);
      row_span(b, step, flat, p.box, P2, false, &touch_first, &touch_last);
      if (first == last) {
        first = last = touch_first;  // no interior: checked samples only
      } else {
        touch_first = std::min(touch_first, first);
        touch_last = std::max(touch_last, last);
      }
      // [0, touch_first) and [touch_last, P2): outside; [touch_first, first) and [last, touch_last): checked.
      const int64_t dz = flat[0] ? 0 : sz, dy = flat[1] ? 0 : sy, dx = flat[2] ? 0 : 1;
      const float bz = static_cast<float>(b[0]), by = static_cast<float>(b[1]), bx = static_cast<float>(b[2]);
      const float tz = static_cast<float>(step[0]), ty = static_cast<float>(step[1]), tx = static_cast<float>(step[2]);
      for (int64_t c = 0; c < channels; ++c) {
        const float* src = in + c * sc;
        float* dst = dst0 + c * out_c;
        std::fill(dst, dst + touch_first, 0.0f);
        for (int64_t x = touch_first; x < first; ++x)
          dst[x] = trilinear_checked(src, sz, sy, p.box, bz + x * tz, by + x * ty, bx + x * tx);
        if (dz == 0 && tz == 0.0f) {  // flat depth: bz is an integer (see flat[])
          for (int64_t x = first; x < last; ++x)
            dst[x] = bilinear_inside(src, sz, sy, dy, dx, bz, by + x * ty, bx + x * tx);
        } else {
          for (int64_t x = first; x < last; ++x)
            dst[x] = trilinear_inside(src, sz, sy, dz, dy, dx, bz + x * tz, by + x * ty, bx + x * tx);
        }
        for (int64_t x = last; x < touch_last; ++x)
          dst[x] = trilinear_checked(src, sz, sy, p.box, bz + x * tz, by + x * ty, bx + x * tx);
        std::fill(dst + touch_last, dst + P2, 0.0f);
      }
      if (seg_dst != nullptr) {
        std::fill(seg_dst, seg_dst + touch_first, p.outside);
        for (int64_t x = touch_first; x < first; ++x)
          seg_dst[x] = nearest_label(seg_in, sz, sy, p.box, bz + x * tz, by + x * ty, bx + x * tx, p.outside);
        for (int64_t x = first; x < last; ++x)
          seg_dst[x] = nearest_label_inside(seg_in, sz, sy, bz + x * tz, by + x * ty, bx + x * tx);
        for (int64_t x = last; x < touch_last; ++x)
          seg_dst[x] = nearest_label(seg_in, sz, sy, p.box, bz + x * tz, by + x * ty, bx + x * tx, p.outside);
        std::fill(seg_dst + touch_last, seg_dst + P2, p.outside);
      }
    }
    if (p.noise_std != 0.0f) {
      for (int64_t c = 0; c < channels; ++c) add_noise(dst0 + c * out_c, P2, c * out_c + row * P2, p.noise_std, p.noise_seed);
    }
  }
}

template void affine_patch<int8_t>(const float*, int64_t, const int64_t*, const int8_t*, float*, int16_t*,
                                   const AffinePatch&);
template void affine_patch<int16_t>(const float*, int64_t, const int64_t*, const int16_t*, float*, int16_t*,
                                    const AffinePatch&);

}  // namespace fastseg::cpu
