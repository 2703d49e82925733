// The scratch cache of scratch.h: a short list of free blocks under a mutex.
#include "scratch.h"

#include <sys/mman.h>

#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

namespace fastseg::cpu {

namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kPage = size_t{4} << 10;

struct Block {
  void* base;
  size_t capacity;
  uint64_t released;  // release order: smaller is older
};

struct Cache {
  std::mutex mutex;
  std::vector<Block> free;
  size_t bytes = 0;
  uint64_t clock = 0;
};

Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: kernels may release blocks during interpreter exit
  return *c;
}

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

void* allocate_block(size_t capacity) {
  const size_t align = capacity >= kHugePage ? kHugePage : kPage;
  void* p = nullptr;
  if (posix_memalign(&p, align, capacity) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (align == kHugePage) madvise(p, capacity, MADV_HUGEPAGE);  // advisory: failure only costs speed
#endif
  return p;
}

}  // namespace

void* scratch_acquire(size_t bytes, size_t* capacity) {
  if (bytes < kMinPooled) {
    void* p = std::malloc(bytes);
    if (!p) throw std::bad_alloc();
    *capacity = bytes;
    return p;
  }
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    size_t best = c.free.size();
    for (size_t i = 0; i < c.free.size(); ++i)
      if (c.free[i].capacity >= bytes && (best == c.free.size() || c.free[i].capacity < c.free[best].capacity)) best = i;
    if (best < c.free.size()) {
      const Block b = c.free[best];
      c.free.erase(c.free.begin() + static_cast<std::ptrdiff_t>(best));
      c.bytes -= b.capacity;
      *capacity = b.capacity;
      return b.base;
    }
  }
  *capacity = round_up(bytes, bytes >= kHugePage ? kHugePage : kPage);
  return allocate_block(*capacity);
}

void scratch_release(void* base, size_t capacity) {
  if (capacity < kMinPooled || capacity > kCacheBytes) {
    std::free(base);
    return;
  }
  std::vector<void*> evicted;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    while (c.bytes + capacity > kCacheBytes) {
      size_t oldest = 0;
      for (size_t i = 1; i < c.free.size(); ++i)
        if (c.free[i].released < c.free[oldest].released) oldest = i;
      evicted.push_back(c.free[oldest].base);
      c.bytes -= c.free[oldest].capacity;
      c.free.erase(c.free.begin() + static_cast<std::ptrdiff_t>(oldest));
    }
    c.free.push_back(Block{base, capacity, c.clock++});
    c.bytes += capacity;
  }
  for (void* p : evicted) std::free(p);
}

size_t release_scratch() {
  std::vector<Block> blocks;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    blocks.swap(c.free);
    c.bytes = 0;
  }
  size_t freed = 0;
  for (const Block& b : blocks) {
    freed += b.capacity;
    std::free(b.base);
  }
  return freed;
}

}  // namespace fastseg::cpu
