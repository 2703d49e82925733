// Draw counts of nnU-Net's foreground intensity sampling, bound in fastseg._C.
//
// nnU-Net's fingerprint draws `RandomState(seed).choice(values, n, replace=True)` per case and
// channel: numpy's legacy generator draws `randint(0, size, n)` indices and gathers the values.
// fastseg only needs how often each index is drawn (the statistics are those of a multiset), so this
// kernel replays the same generator stream and counts, without an n-element index array:
//
//   MT19937 (Matsumoto & Nishimura, 1998): a state of 624 32-bit words and a position. When the
//   position reaches 624 the whole state is regenerated ("twist"): word i becomes
//       key[i + 397] ^ (y >> 1) ^ (y odd ? 0x9908b0df : 0),   y = (key[i] & 0x80000000) | (key[i + 1] & 0x7fffffff)
//   (indices mod 624). Each output is the next word, "tempered":
//       y ^= y >> 11; y ^= (y << 7) & 0x9d2c5680; y ^= (y << 15) & 0xefc60000; y ^= y >> 18.
//
//   numpy's bounded draw for a range [0, size) that fits 32 bits, as its legacy `randint` makes it
//   (masked rejection): mask = the smallest 2^k - 1 >= size - 1; draw the next 32-bit output, keep
//   `output & mask` when it is <= size - 1, else draw again. size == 1 draws nothing (every index
//   is 0). (Sizes up to 2^31 here; numpy's larger ranges are left to numpy.)
//
// The caller passes the generator's state (`RandomState.get_state()`: key and position) and gets
// back the counts and the state after the draws, so that it can hand the state back to the
// generator and later draws continue the same stream. The draws are sequential by nature (one
// stream); the counting is a scatter, so the whole kernel runs on one thread, in a few ns a draw.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "binding.h"

namespace py = pybind11;

namespace fastseg::bind {
namespace {

constexpr int kStateWords = 624;
constexpr int kShift = 397;
constexpr uint32_t kMatrixA = 0x9908b0dfU;
constexpr uint32_t kUpper = 0x80000000U;
constexpr uint32_t kLower = 0x7fffffffU;

struct Mt19937 {
  // A copy of the state (not a pointer into the caller's array: the counts are int32, which may
  // alias uint32, so the compiler would reload the state after every count).
  uint32_t key[kStateWords];
  int pos;  // next word to output; 624: twist first

  static uint32_t mix(uint32_t a, uint32_t b, uint32_t shifted) {
    const uint32_t y = (a & kUpper) | (b & kLower);
    return shifted ^ (y >> 1) ^ (kMatrixA & (0U - (y & 1U)));  // branch-free: y is odd half the time
  }

  uint32_t tempered[kStateWords];  // the outputs of the current block, tempered all at once

  void twist() {  // the formula above, with the index wrap-around split out of the loops
    int i = 0;
    for (; i < kStateWords - kShift; ++i) key[i] = mix(key[i], key[i + 1], key[i + kShift]);
    for (; i < kStateWords - 1; ++i) key[i] = mix(key[i], key[i + 1], key[i + kShift - kStateWords]);
    key[kStateWords - 1] = mix(key[kStateWords - 1], key[0], key[kShift - 1]);
    pos = 0;
  }

  void temper_from(int first) {  // a vectorizable loop over the rest of the block
    for (int i = first; i < kStateWords; ++i) {
      uint32_t y = key[i];
      y ^= y >> 11;
      y ^= (y << 7) & 0x9d2c5680U;
      y ^= (y << 15) & 0xefc60000U;
      y ^= y >> 18;
      tempered[i] = y;
    }
  }

  void start() {  // call once after setting key and pos
    if (pos < kStateWords) temper_from(pos);
  }

  void next_block() {
    twist();
    temper_from(0);
  }
};

// The smallest 2^k - 1 that is >= v.
uint32_t mask_for(uint32_t v) {
  uint32_t m = v;
  m |= m >> 1;
  m |= m >> 2;
  m |= m >> 4;
  m |= m >> 8;
  m |= m >> 16;
  return m;
}

// counts[i] += how often index i is drawn by randint(0, size, n), for i < mask_for(size - 1) + 1
// (`counts` holds that many entries: rejected draws are counted branch-free into the entries past
// size - 1 and then discarded); updates `g`.
void draw_counts_kernel(Mt19937& g, int64_t size, int64_t n, int32_t* counts) {
  if (size == 1) {  // numpy draws nothing for an empty range
    counts[0] += static_cast<int32_t>(n);
    return;
  }
  const uint32_t bound = static_cast<uint32_t>(size - 1);
  const uint32_t mask = mask_for(bound);
  int64_t accepted = 0;
  while (accepted < n) {
    if (g.pos >= kStateWords) g.next_block();
    int pos = g.pos;
    for (; pos < kStateWords && accepted < n; ++pos) {
      const uint32_t v = g.tempered[pos] & mask;
      const uint32_t ok = v <= bound;
      counts[v] += 1;
      accepted += ok;
    }
    g.pos = pos;
  }
}

// (counts int32 (size,), a view of a longer array; position after the draws); `key` (uint32 (624,)) is updated in place.
py::tuple mt19937_draw_counts(py::array_t<uint32_t, 0> key, int pos, int64_t size, int64_t n) {
  require(key.ndim() == 1 && key.shape(0) == kStateWords,
          "key must be the 624 words of an MT19937 state, got shape " + shape_str(key));
  require_c_contiguous(key, "key");
  require(key.writeable(), "key must be writable (the state after the draws is written back)");
  require(pos >= 0 && pos <= kStateWords, "pos must be in [0, 624], got " + std::to_string(pos));
  require(size >= 1 && size <= (int64_t{1} << 31),
          "size must be in [1, 2**31], got " + std::to_string(size));
  require(n >= 0 && n <= std::numeric_limits<int32_t>::max(),
          "n must be in [0, 2**31 - 1] (counts are int32), got " + std::to_string(n));
  const int64_t slots = size == 1 ? 1 : static_cast<int64_t>(mask_for(static_cast<uint32_t>(size - 1))) + 1;
  py::array_t<int32_t> counts(slots);  // the first `size` are the counts (see draw_counts_kernel)
  int32_t* c = counts.mutable_data();
  uint32_t* state = key.mutable_data();
  Mt19937 g;
  {
    py::gil_scoped_release release;
    std::copy(state, state + kStateWords, g.key);
    g.pos = pos;
    g.start();
    std::fill(c, c + slots, 0);
    draw_counts_kernel(g, size, n, c);
    std::copy(g.key, g.key + kStateWords, state);
  }
  return py::make_tuple(counts[py::slice(0, size, 1)], g.pos);
}

}  // namespace

void register_sampling(py::module_& m) {
  m.def("mt19937_draw_counts", &mt19937_draw_counts, py::arg("key"), py::arg("pos"), py::arg("size"), py::arg("n"),
        "How often randint(0, size, n) of numpy's legacy MT19937 generator (state key, pos) draws each index; "
        "returns (counts int32, new pos) and writes the new state into key.");
}

}  // namespace fastseg::bind
