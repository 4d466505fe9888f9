// The memory side of the CPU row loops. Once a row is copied into its per-thread buffer every
// pass runs from L1; what a row then waits on is DRAM: the first read of its logits (and of a
// probability target) and the write of its gradient. Two things hide that:
//
//   * NextRow: the lines of the next row are prefetched during this row's arithmetic, so its
//     copy pass reads from cache instead of stalling on every line;
//   * GradStore: a large gradient is written with non-temporal stores, which skip the read for
//     ownership an ordinary store to a line not in cache costs -- a third of the traffic of a
//     kernel that reads the logits and writes the gradient. A gradient that fits in cache is
//     stored normally, where its consumer finds it.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace rk {

// Up to two streams of the next row, as byte addresses and the bytes per element.
struct NextRow {
  const char* first = nullptr;
  int64_t first_size = 0;
  const char* second = nullptr;
  int64_t second_size = 0;

  // Prefetch the lines holding element j of each stream (a loop over vectors calls it once per
  // vector: a line is asked for at most a few times, and a prefetch of a present line is cheap).
  void touch(int64_t j) const {
    if (first != nullptr) __builtin_prefetch(first + j * first_size, 0, 3);
    if (second != nullptr) __builtin_prefetch(second + j * second_size, 0, 3);
  }
};

// Gradients of at least this many bytes are streamed past the cache (about an L2 and a half of
// the cores this runs on: a smaller one is still in cache when its consumer reads it).
constexpr int64_t kStreamGradBytes = int64_t{4} << 20;

template <class T, class scalar_t>
struct GradStore {
  using Vec = at::vec::Vectorized<T>;
  static constexpr int64_t kLanes = Vec::size();
  bool streaming = false;

  void vector(const Vec& g, scalar_t* out) const {
    if constexpr (std::is_same_v<scalar_t, T>) {
#if defined(__AVX2__) && defined(CPU_CAPABILITY_AVX2)
      if constexpr (std::is_same_v<T, float> && kLanes == 8) {
        if (streaming && (reinterpret_cast<uintptr_t>(out) & 31) == 0) {
          _mm256_stream_ps(out, __m256(g));
          return;
        }
      }
#endif
      g.store(out);
    } else {
      T lanes[kLanes];
      g.store(lanes);
      for (int64_t i = 0; i < kLanes; ++i) out[i] = static_cast<scalar_t>(lanes[i]);
    }
  }

  // Non-temporal stores are weakly ordered: fence them before the rows are handed back.
  void finish() const {
#if defined(__AVX2__)
    if (streaming) _mm_sfence();
#endif
  }
};

}  // namespace rk
