// Launch conventions shared by the CUDA launchers: 1D grids of kThreads-thread blocks, capped at
// kMaxBlocks blocks, with grid-stride loops over int64_t element indices inside the kernels, and a
// launch-error check after every <<<>>>.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fastseg::cuda {

constexpr int kThreads = 256;
// Far more blocks than an H100/H200 keeps resident; larger inputs loop (grid-stride).
constexpr int64_t kMaxBlocks = int64_t{1} << 16;

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

// Throws std::runtime_error (RuntimeError in Python) naming the kernel when its launch failed.
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fastseg CUDA kernel ") + kernel + " failed: " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
}

__device__ inline int64_t grid_start() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ inline int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

}  // namespace fastseg::cuda
