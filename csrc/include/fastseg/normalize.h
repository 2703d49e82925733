// Intensity normalization bodies.
//
// Every nnU-Net scheme is one affine map after optional clipping, applied in float32 exactly as
// nnunetv2's classes compute it on a float32 image:
//
//   CTNormalization          out = (clip(x, p00_5, p99_5) - mean_fg) / max(std_fg, 1e-8)
//   ZScoreNormalization      out = (x - mean) / max(std, 1e-8)        (mean/std over the mask if given;
//                                                                      voxels outside keep x)
//   RescaleTo01Normalization out = (x - min) / max(max - min, 1e-8)
//   RGBTo01Normalization     out = x / 255
//   NoNormalization          out = x
//
// The statistics some schemes need (mean/std, min/max) come from one reduction pass accumulated in
// double; the map itself is a second, fused pass that reads the input type and writes float32.
#pragma once

#include "fastseg/hd.h"

namespace fastseg {

struct AffineParams {
  float lo;     // clip bounds, used when clip != 0
  float hi;
  float shift;  // subtracted after clipping
  float denom;  // divided by afterwards
  int clip;
};

FASTSEG_HD float normalize_value(float x, const AffineParams& p) {
  if (p.clip) x = clamp_value(x, p.lo, p.hi);
  return (x - p.shift) / p.denom;
}

template <typename T>
FASTSEG_HD bool is_finite_value(T x) { return x - x == T(0); }

}  // namespace fastseg
