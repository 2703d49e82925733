// Helpers of the _C_cuda bindings: argument checks (std::invalid_argument → ValueError) and the
// conversion of the Python ints that carry device pointers and streams.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastseg::bind {

inline void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

template <typename T>
std::string list_str(const std::vector<T>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += std::to_string(v[i]) + (i + 1 < v.size() ? ", " : "");
  return s + "]";
}

// A device pointer from its address; null only for an empty array.
template <typename T>
T* device_pointer(std::uintptr_t address, int64_t elements, const char* name) {
  require(address != 0 || elements == 0,
          std::string(name) + " is a null pointer but must hold " + std::to_string(elements) + " elements");
  return reinterpret_cast<T*>(address);
}

inline cudaStream_t stream_of(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

}  // namespace fastseg::bind
