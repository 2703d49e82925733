// Shared conventions for the per-element bodies in this folder.
//
// Every formula that both the CPU (OpenMP) and the CUDA launchers evaluate lives in a header of this
// folder as a FASTSEG_HD function: `__host__ __device__` under nvcc, a plain inline function in the
// CPU build. The CPU tests therefore exercise exactly the arithmetic the GPU runs.
//
// Rules for a body: scalars and raw pointers only, int64_t indices, no allocation, no exceptions,
// no I/O. Validation belongs to the Python wrappers (first line) and to the bindings (second line).
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

}  // namespace fastseg
