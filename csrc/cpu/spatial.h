// CPU launcher of the spatial augmentation (fastseg/spatial.h): an affine resampling of a box of a
// volume into a training patch, image trilinear, segmentation nearest, optional Gaussian noise.
#pragma once

#include <cstdint>

#include "fastseg/spatial.h"

namespace fastseg::cpu {

struct AffinePatch {
  double m[3][4];      // input index = m[:, :3] (z, y, x) + m[:, 3]
  Box3 box;            // the input voxels that exist
  int64_t patch[3];    // P0, P1, P2
  int16_t outside;     // the label outside the box
  float noise_std;     // 0: no noise
  uint64_t noise_seed;
};

// in: (C, D, H, W) float32, C-contiguous; seg_in: (D, H, W) labels or nullptr; out: (C, P0, P1, P2);
// seg_out: (P0, P1, P2) or nullptr. Rows of the patch are split over the OpenMP threads.
template <typename L>
void affine_patch(const float* in, int64_t channels, const int64_t* in_shape, const L* seg_in, float* out,
                  int16_t* seg_out, const AffinePatch& p);

}  // namespace fastseg::cpu
