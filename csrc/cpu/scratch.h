// Scratch memory for the CPU kernels, recycled between calls.
//
// A kernel's large temporaries (the run tables of connected-component labelling: tens of MB for a
// CT volume) can cost more to fault in than to compute with: the OS zeroes every new 4 KiB page on
// first touch, about 0.4 ms per MB on a small server, which is 20-30 % of a 256^3 labelling. So
// buffers of kMinPooled bytes and more come from a process-wide cache of blocks that earlier calls
// released, allocated 2 MiB-aligned and advised for transparent huge pages (a fault then brings in
// 2 MiB at a time), and go back to the cache when the Scratch that holds them is destroyed. The
// cache keeps at most kCacheBytes, dropping the blocks released longest ago first; release_scratch()
// empties it. Smaller buffers are plain heap memory, which malloc already recycles.
//
// The memory a Scratch hands out is uninitialised, like new T[n].
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace fastseg::cpu {

constexpr size_t kMinPooled = size_t{1} << 18;    // 256 KiB
constexpr size_t kCacheBytes = size_t{1} << 28;   // 256 MiB

// A block of at least `bytes` bytes; returns its base and sets *capacity. Thread-safe.
void* scratch_acquire(size_t bytes, size_t* capacity);
// Hands a block from scratch_acquire back (to the cache, or to the OS when the cache is full).
void scratch_release(void* base, size_t capacity);
// Returns every cached block to the OS; returns the bytes freed.
size_t release_scratch();

// An uninitialised array of n trivially copyable T from the scratch cache; move-only.
template <typename T>
class Scratch {
  static_assert(std::is_trivially_copyable_v<T>, "scratch holds plain data only");

 public:
  Scratch() = default;
  explicit Scratch(size_t n) { reset(n); }
  Scratch(Scratch&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), cap_(std::exchange(o.cap_, 0)), n_(o.n_) {}
  Scratch& operator=(Scratch&& o) noexcept {
    if (this != &o) {
      free();
      ptr_ = std::exchange(o.ptr_, nullptr);
      cap_ = std::exchange(o.cap_, 0);
      n_ = o.n_;
    }
    return *this;
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { free(); }

  // Drops the current array and takes one of n elements (n = 0: none).
  void reset(size_t n) {
    free();
    n_ = n;
    if (n > 0) ptr_ = static_cast<T*>(scratch_acquire(n * sizeof(T), &cap_));
  }
  T* get() const { return ptr_; }
  T& operator[](size_t i) const { return ptr_[i]; }
  size_t size() const { return n_; }

 private:
  void free() {
    if (ptr_) scratch_release(ptr_, cap_);
    ptr_ = nullptr;
    cap_ = 0;
  }
  T* ptr_ = nullptr;
  size_t cap_ = 0;
  size_t n_ = 0;
};

}  // namespace fastseg::cpu
