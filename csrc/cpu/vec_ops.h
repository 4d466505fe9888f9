// Ops<Vectorized<T>>: the elementwise operations of loss_math.h on ATen's SIMD vectors, so
// the CPU kernel evaluates the shared formulas a whole vector at a time (exp_avx2.h for float
// exp, expm1, log and log1p, Sleef for the rest).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "cpu/exp_avx2.h"
#include "loss_math.h"

namespace rk {

template <class T>
struct Ops<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  RK_ELEM static V exp(const V& x) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float> && V::size() == 8) return V(exp_avx2(x));
#endif
    // Sleef's u10 exp, not ATen's exp_u20: exp_u20 clamps its input, which turns NaN into a
    // finite number and +inf into FLT_MAX; a NaN logit must poison its row.
    return x.exp();
  }
  RK_ELEM static V exp_shifted(const V& x) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float> && V::size() == 8) return V(exp_nonpositive_avx2(x));
#endif
    return x.exp();
  }
  RK_ELEM static V log(const V& x) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float> && V::size() == 8) return V(log_avx2(x));
#endif
    return x.log();
  }
  RK_ELEM static V expm1(const V& x) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float> && V::size() == 8) return V(expm1_avx2(x));
#endif
    return x.expm1();
  }
  RK_ELEM static ExpExpm1<V> exp_expm1_nonpositive(const V& x) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float> && V::size() == 8) {
      const ExpExpm1Avx2 both = exp_expm1_nonpositive_avx2(x);
      return {V(both.exp), V(both.expm1)};
    }
#endif
    return {x.exp(), x.expm1()};
  }
  RK_ELEM static V log1p(const V& x) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float> && V::size() == 8) return V(log1p_avx2(x));
#endif
    return x.log1p();
  }
  RK_ELEM static V log_biased(const V& log_a, T eps, const V& x, const V& q, const V& one_minus_q) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float> && V::size() == 8) {
      return V(log_biased_avx2(log_a, eps, x, q, one_minus_q));
    }
#endif
    return log_near_one(log_a + (V(eps) - x.log1p()), q, one_minus_q);
  }
  RK_ELEM static V log_near_one(const V& log_q, const V& q, const V& one_minus_q) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float> && V::size() == 8) return V(log_near_one_avx2(log_q, q, one_minus_q));
#endif
    const V likely = q > V(T(0.75));  // Ops<T>::log_near_one; a vector of none skips the division
    if (likely.zero_mask() == (1 << V::size()) - 1) return log_q;
    return V::blendv(log_q, V(T(0)) - (one_minus_q / q).log1p(), likely);
  }
  RK_ELEM static V reciprocal_one_plus(const V& x) {
#if defined(CPU_CAPABILITY_AVX2) && defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float> && V::size() == 8) return V(reciprocal_one_plus_avx2(x));
#endif
    return V(T(1)) / (V(T(1)) + x);
  }
  RK_ELEM static V max(const V& a, const V& b) { return at::vec::maximum(a, b); }  // propagates NaN
  RK_ELEM static V clamp_min(const V& x, const V& low) { return at::vec::clamp_min(x, low); }  // keeps NaN
  RK_ELEM static V select_gt(const V& x, const V& threshold, const V& yes, const V& no) {
    return V::blendv(no, yes, x > threshold);
  }
  RK_ELEM static V select_nonzero(const V& x, const V& v) { return V::blendv(V(T(0)), v, x != V(T(0))); }
};

// Asks for the cache line holding p[j] once every 64 bytes of the row (one request per line,
// whatever the row's alignment): the pass over a row that the cache already holds fetches the
// next row this way, where the first pass of that row would otherwise wait on memory with no
// arithmetic to overlap it. A null p asks for nothing.
template <class scalar_t>
RK_ELEM void prefetch_line(const scalar_t* p, int64_t j) {
  if (p != nullptr && (j * static_cast<int64_t>(sizeof(scalar_t))) % 64 == 0) __builtin_prefetch(p + j, 0, 3);
}

// The same for a line the pass after next will write (the row's gradient): asked for with the
// intent to write while an arithmetic-bound pass runs, the line is in the cache when the
// gradient pass stores to it, where each store would otherwise wait on the line's read from
// memory that a store to a line not in the cache needs.
template <class scalar_t>
RK_ELEM void prefetch_line_for_write(scalar_t* p, int64_t j) {
  if (p != nullptr && (j * static_cast<int64_t>(sizeof(scalar_t))) % 64 == 0) __builtin_prefetch(p + j, 1, 3);
}

// The sum of the lanes, from lane 0 up.
template <class T>
T lane_sum(const at::vec::Vectorized<T>& v) {
  T lanes[at::vec::Vectorized<T>::size()];
  v.store(lanes);
  T total = T(0);
  for (int64_t i = 0; i < at::vec::Vectorized<T>::size(); ++i) total += lanes[i];
  return total;
}

// The largest lane, NaN if a lane is NaN.
template <class T>
T lane_max(const at::vec::Vectorized<T>& v) {
  T lanes[at::vec::Vectorized<T>::size()];
  v.store(lanes);
  T best = lanes[0];
  for (int64_t i = 1; i < at::vec::Vectorized<T>::size(); ++i) best = Ops<T>::max(best, lanes[i]);
  return best;
}

// v into out[0, lanes) in the logits' dtype: a plain store for the compute type, a rounding
// copy for the 16-bit dtypes.
template <class scalar_t, class T>
RK_ELEM void store_as(const at::vec::Vectorized<T>& v, scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, T>) {
    v.store(out);
  } else {
    constexpr int64_t kLanes = at::vec::Vectorized<T>::size();
    T lanes[kLanes];
    v.store(lanes);
    for (int64_t i = 0; i < kLanes; ++i) out[i] = static_cast<scalar_t>(lanes[i]);
  }
}

}  // namespace rk
