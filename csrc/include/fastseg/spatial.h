// Spatial augmentation bodies: an affine resampling of a box of a volume into a training patch.
//
// The geometry. An output voxel o = (z, y, x) of a patch (C, P0, P1, P2) reads the input volume
// (C, D, H, W) at the continuous voxel index
//
//     p = M o + t          (M 3x3, t 3: index space, voxel k's centre at k)
//
// and only the input voxels inside a box [lo, hi) per axis exist; everything else reads as zero
// (image) or as `outside` (segmentation). The caller folds rotation, scaling, patch centring and the
// position of the box in the case into M and t (fastseg/data/spatial.py), so that the kernel reads the
// memory-mapped case directly and never copies the box.
//
//   image          trilinear: the 8 neighbours floor(p) + {0, 1}^3 with weights (1 - f) or f per axis,
//                  f = p - floor(p); a neighbour outside the box contributes 0 (zero padding, as
//                  torch's grid_sample(padding_mode="zeros") and DALI's warp_affine with fill 0).
//   segmentation   nearest neighbour floor(p + 1/2); `outside` when that voxel is outside the box.
//   noise          optionally x + std * n with n ~ N(0, 1) from a counter-based generator (below).
//
// Loop order. One output row (fixed c, z, y; x = 0..P2-1) walks a straight line through the input,
// p(x) = b + x s with s = M's x column; consecutive samples are about one voxel apart, so the 8
// neighbour reads of a sample hit the cache lines of the previous one. The launcher clips each row
// to the interval of x whose 8 neighbours all lie inside the box (`row_interior`) and runs the
// unchecked body there, the checked body on the few samples before and after it. An axis along
// which the row does not move and whose coordinate is an integer (the depth axis of a 2D or
// in-plane-only transform, every axis of a pure translation) is "flat": its second neighbour has
// weight 0 exactly, so it is not read (its stride becomes 0) and the box needs only floor(p) on it.
// Coordinates and weights are float32 (a coordinate of a few hundred voxels is exact to ~3e-5
// voxels), products and sums float32.
//
// The generator. Noise for output element i (its flat index in the patch) of a patch seeded with
// `seed` is a pure function of (seed, i >> 1): splitmix64 (Steele, Lea & Flood 2014) of
// seed + (i >> 1) * golden gives 64 random bits, two 24-bit uniforms u1 in (0, 1], u2 in [0, 1), and
// the Box-Muller pair sqrt(-2 ln u1) (cos 2 pi u2, sin 2 pi u2): element 2k takes the cosine, 2k + 1
// the sine. Any thread can fill any element; the result does not depend on the thread count.
#pragma once

#include <cmath>
#include <cstdint>

#include "fastseg/hd.h"

namespace fastseg {

struct Box3 {
  int64_t lo[3];  // first voxel inside, (z, y, x)
  int64_t hi[3];  // one past the last voxel inside
};

FASTSEG_HD bool in_box(const Box3& box, int64_t z, int64_t y, int64_t x) {
  return z >= box.lo[0] && z < box.hi[0] && y >= box.lo[1] && y < box.hi[1] && x >= box.lo[2] && x < box.hi[2];
}

// Trilinear sample of one channel `in` (strides sz, sy; x contiguous) at p = (pz, py, px), zero
// outside `box`; every neighbour checked.
FASTSEG_HD float trilinear_checked(const float* in, int64_t sz, int64_t sy, const Box3& box, float pz, float py,
                                   float px) {
  const float fz0 = floor_value(pz), fy0 = floor_value(py), fx0 = floor_value(px);
  const int64_t z0 = static_cast<int64_t>(fz0), y0 = static_cast<int64_t>(fy0), x0 = static_cast<int64_t>(fx0);
  const float wz[2] = {1.0f - (pz - fz0), pz - fz0};
  const float wy[2] = {1.0f - (py - fy0), py - fy0};
  const float wx[2] = {1.0f - (px - fx0), px - fx0};
  float acc = 0.0f;
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      for (int c = 0; c < 2; ++c) {
        const float w = wz[a] * wy[b] * wx[c];
        if (w != 0.0f && in_box(box, z0 + a, y0 + b, x0 + c)) acc += w * in[(z0 + a) * sz + (y0 + b) * sy + (x0 + c)];
      }
    }
  }
  return acc;
}

// Trilinear sample where all neighbours are known to be inside; dz, dy, dx: the offsets of the second
// neighbour per axis (the stride, or 0 on a flat axis).
FASTSEG_HD float trilinear_inside(const float* in, int64_t sz, int64_t sy, int64_t dz, int64_t dy, int64_t dx,
                                  float pz, float py, float px) {
  const float fz0 = floor_value(pz), fy0 = floor_value(py), fx0 = floor_value(px);
  const float tz = pz - fz0, ty = py - fy0, tx = px - fx0;
  const float* q = in + static_cast<int64_t>(fz0) * sz + static_cast<int64_t>(fy0) * sy + static_cast<int64_t>(fx0);
  const float c00 = q[0] + tx * (q[dx] - q[0]);
  const float c01 = q[dy] + tx * (q[dy + dx] - q[dy]);
  const float c10 = q[dz] + tx * (q[dz + dx] - q[dz]);
  const float c11 = q[dz + dy] + tx * (q[dz + dy + dx] - q[dz + dy]);
  const float c0 = c00 + ty * (c01 - c00);
  const float c1 = c10 + ty * (c11 - c10);
  return c0 + tz * (c1 - c0);
}

// trilinear_inside on a flat depth axis (dz = 0, pz an integer: 2D and in-plane transforms): the same
// value (the depth lerp of two equal values returns them), from 4 neighbours instead of 8.
FASTSEG_HD float bilinear_inside(const float* in, int64_t sz, int64_t sy, int64_t dy, int64_t dx, float pz, float py,
                                 float px) {
  const float fy0 = floor_value(py), fx0 = floor_value(px);
  const float ty = py - fy0, tx = px - fx0;
  const float* q = in + static_cast<int64_t>(pz) * sz + static_cast<int64_t>(fy0) * sy + static_cast<int64_t>(fx0);
  const float c00 = q[0] + tx * (q[dx] - q[0]);
  const float c01 = q[dy] + tx * (q[dy + dx] - q[dy]);
  return c00 + ty * (c01 - c00);
}

// Nearest-neighbour label at p, `outside` when that voxel is outside `box`.
template <typename L>
FASTSEG_HD int16_t nearest_label(const L* in, int64_t sz, int64_t sy, const Box3& box, float pz, float py, float px,
                                 int16_t outside) {
  const int64_t z = static_cast<int64_t>(floor_value(pz + 0.5f));
  const int64_t y = static_cast<int64_t>(floor_value(py + 0.5f));
  const int64_t x = static_cast<int64_t>(floor_value(px + 0.5f));
  return in_box(box, z, y, x) ? static_cast<int16_t>(in[z * sz + y * sy + x]) : outside;
}

// The nearest label where that voxel is known to be inside (the rows' interior, where all 8 trilinear
// neighbours are: floor(p + 1/2) is one of them).
template <typename L>
FASTSEG_HD int16_t nearest_label_inside(const L* in, int64_t sz, int64_t sy, float pz, float py, float px) {
  const int64_t z = static_cast<int64_t>(floor_value(pz + 0.5f));
  const int64_t y = static_cast<int64_t>(floor_value(py + 0.5f));
  const int64_t x = static_cast<int64_t>(floor_value(px + 0.5f));
  return static_cast<int16_t>(in[z * sz + y * sy + x]);
}

// splitmix64's output function of a counter.
FASTSEG_HD uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The Box-Muller pair of counter k under `seed` (see the header comment).
FASTSEG_HD void normal_pair(uint64_t seed, uint64_t k, float* n0, float* n1) {
  const uint64_t bits = splitmix64(seed + k * 0x9e3779b97f4a7c15ULL);
  const float scale = 1.0f / 16777216.0f;  // 2^-24
  const float u1 = (static_cast<float>(bits >> 40) + 1.0f) * scale;                  // (0, 1]
  const float u2 = static_cast<float>((bits >> 16) & 0xffffffULL) * scale;           // [0, 1)
  const float r = sqrtf(-2.0f * logf(u1));
  const float angle = 6.283185307179586f * u2;
  *n0 = r * cosf(angle);
  *n1 = r * sinf(angle);
}

}  // namespace fastseg
