// CPU launcher of the intensity augmentations (fastseg/intensity.h) and the steps after them (mirroring,
// masking, the segmentation's padding label), applied in place to a batch of training patches.
#pragma once

#include <cstdint>

#include "fastseg/intensity.h"

namespace fastseg::cpu {

// Bits of IntensityBatch::flags, per sample.
constexpr int32_t kContrast = 1;
constexpr int32_t kGammaInverted = 2;
constexpr int32_t kGamma = 4;
constexpr int kMirrorShift = 4;  // bit kMirrorShift + a: flip spatial axis a (of the D, H, W axes)

// One batch's parameters, drawn by fastseg/data/intensity.py. Shapes: B samples, C channels, the
// spatial axes as (D, H, W) (a 2D batch has D = 1; its per-axis parameters are given for all 3 axes,
// axis 0 left alone).
struct IntensityBatch {
  int64_t batch;
  int64_t channels;
  int64_t shape[3];            // D, H, W
  const int32_t* flags;        // [B]
  const double* blur_sigma;    // [B, C, 3]; 0: no blur along that axis (and a channel with all 0 unblurred)
  const float* brightness;     // [B, C]; the factor (1: unchanged)
  const float* contrast;       // [B, C]; the factor, where flags has kContrast
  const int32_t* lowres_size;  // [B, C, 3]; m per axis (n or 0: that axis untouched)
  const float* gamma;          // [B, C, 2]; the inverted gamma's and the plain gamma's exponent
  const uint8_t* mask;         // [C]; 1: the channel is set to 0 where seg < 0
  int16_t outside;             // the segmentation's padding label ...
  int16_t replacement;         // ... replaced by this one at the end
};

// data: [B, C, D, H, W] float32; seg: [B, 1, D, H, W] int16; both C-contiguous, changed in place.
// Samples are split over the OpenMP threads; each applies, in nnU-Net's order: blur, brightness,
// contrast, low resolution, inverted gamma, gamma, mirroring, masking, outside -> replacement.
void augment_intensity(float* data, int16_t* seg, const IntensityBatch& p);

}  // namespace fastseg::cpu
