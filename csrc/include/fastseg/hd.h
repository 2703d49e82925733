// Shared conventions for the per-element bodies in this folder.
//
// Every formula that both the CPU (OpenMP) and the CUDA launchers evaluate lives in a header of this
// folder as a FASTSEG_HD function: `__host__ __device__` under nvcc, a plain inline function in the
// CPU build. The CPU tests therefore exercise exactly the arithmetic the GPU runs.
//
// Rules for a body: scalars and raw pointers only, int64_t indices, no allocation, no exceptions,
// no I/O. Validation belongs to the Python wrappers (first line) and to the bindings (second line).
//
// Precision: a body computes in the same types on both devices, so that the CPU tests pin down what
// the GPU computes. Resampling (resample.h) takes sample positions, tap weights and the cubic B-spline
// prefilter in double on both: the CPU launcher filters blocks of lines in a double buffer, the CUDA
// launcher filters each line in a float64 scratch buffer (fastseg/ops/_cuda.py allocates it), and
// both round an interpolated value to float32 once, on the store. The fused export (inference.h)
// runs in float32 with float32 tap weights on both. The CUDA module is compiled with --fmad=false
// and the portable x86-64 CPU build has no FMA instructions, so neither contracts a multiply-add.
// What still differs: CUDA's double pow() (within 2 ulp) against the C library's, used only by the
// prefilter's initial sum on lines of at most kCubicHorizon padded samples; and the order in which
// the CUDA accumulation's atomic adds reach a voxel that several tiles cover. Resampled values
// therefore agree within a few float32 ulps of the data per axis pass (tests/test_gpu_parity.py).
//
// Axis vocabulary, used everywhere: a volume is (C, D, H, W) = (channel, z, y, x), row-major, x
// contiguous. A 2D image is the same with D = 1.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTSEG_HD __host__ __device__ __forceinline__
#else
#define FASTSEG_HD inline
#endif

namespace fastseg {

template <typename T>
FASTSEG_HD T clamp_value(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// floorf(x) for |x| < 2^63, exactly, inline: the portable x86-64 build has no SSE4.1 (roundss), so
// floorf is a library call there, which per-sample loops (coordinates, indices) cannot afford.
FASTSEG_HD float floor_value(float x) {
#if defined(__CUDA_ARCH__)
  return floorf(x);
#else
  const float t = static_cast<float>(static_cast<int64_t>(x));  // truncation; exact (|x| >= 2^23 is integral)
  return t > x ? t - 1.0f : t;
#endif
}

}  // namespace fastseg
