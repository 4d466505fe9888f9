// A fast, NaN- and inf-correct exp, expm1, log and log1p for 8 floats (AVX2 + FMA). Header-only
// and free of ATen so that benchmarks/exp_accuracy.cpp can measure its error on its own. Each is
// forced inline: a call per vector passes its __m256 through memory and spills the caller's
// registers.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <cmath>

#define RK_AVX_INLINE inline __attribute__((always_inline))

namespace rk {

// x = n ln2 + r with a two-part ln2 (Cody-Waite), |r| <= ln2/2: returns r and sets n.
RK_AVX_INLINE __m256 reduce_ln2_avx2(__m256 x, __m256& n) {
  n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 = 0.693359375 - 2.12194440e-4
  return _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
}

// 2^n for integral n in [-126, 127], one normal float.
RK_AVX_INLINE __m256 pow2_avx2(__m256 n) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}

// x = 2^k m with m in [sqrt(1/2), sqrt(2)) for positive normal floats (and +inf): returns m and
// sets k.
RK_AVX_INLINE __m256 split_exponent_avx2(__m256 x, __m256i& k) {
  k = _mm256_srai_epi32(_mm256_sub_epi32(_mm256_castps_si256(x), _mm256_set1_epi32(0x3f3504f3)), 23);
  return _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_castps_si256(x), _mm256_slli_epi32(k, 23)));
}

// e^r by its degree-6 Taylor polynomial, x = n ln2 + r (reduce_ln2_avx2), setting n. x must
// already be clamped to [ln FLT_MIN, ln FLT_MAX].
RK_AVX_INLINE __m256 exp_reduced_avx2(__m256 x, __m256& n) {
  const __m256 r = reduce_ln2_avx2(x, n);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  return _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
}

// exp for 8 floats, fewer instructions than Sleef's u10 exp, whose cost dominates every
// label-family loss (one exp per logit). The polynomial's truncation error is |r|^7 / 7! <=
// 1.2e-7 relative; measured error: at most 2.74 ulp against double-precision exp over 14M
// points of [-87, 88] (benchmarks/exp_accuracy.cpp; Sleef u10: 1 ulp).
// Unlike ATen's exp_u20 (20 ulp) it keeps NaN as NaN, gives exactly 0 below ln(FLT_MIN)
// (e^-inf = 0: a -inf logit has p = 0 exactly) and +inf above ln(FLT_MAX). Results below
// FLT_MIN flush to 0 (subnormal probabilities are irrelevant next to the row's fp32 sum).
RK_AVX_INLINE __m256 exp_avx2(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654475f);  // ln(FLT_MIN)
  const __m256 hi = _mm256_set1_ps(88.72283905f);   // ln(FLT_MAX)
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  __m256 n;
  const __m256 p = exp_reduced_avx2(xc, n);
  // 2^n for n in [-126, 128] as 2^(n>>1) * 2^(n - (n>>1)): both halves are normal floats,
  // where a single exponent field would overflow at n = 128 (x near ln FLT_MAX).
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(ni, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), bias), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN in, NaN out
}

// exp(x) for x in [-inf, 0], the softmax's exp(a_j - max_j a): the same polynomial without the
// overflow, NaN and exponent-split handling (2^n with n in [-126, 0] is one normal float),
// about a third fewer instructions. NaN input gives an unspecified finite value: a NaN logit
// reaches the loss through the row max instead (max(a) is NaN, so is every log p).
RK_AVX_INLINE __m256 exp_nonpositive_avx2(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654475f);  // ln(FLT_MIN)
  const __m256 xc = _mm256_max_ps(x, lo);
  __m256 n;
  const __m256 p = exp_reduced_avx2(xc, n);
  const __m256 y = _mm256_mul_ps(p, pow2_avx2(n));
  return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
}

// e^x and e^x - 1 for 8 floats, x in [-inf, 0] (exp_nonpositive_avx2's domain, a rounding above
// 0 included), from one range reduction: x = n ln2 + r, e^r - 1 = r P(r) with P the Taylor
// polynomial of (e^r - 1) / r to degree 6 (truncated below |r|^7 / 8! = 4.3e-8 relative), and
//   e^x = 2^n (1 + (e^r - 1)),   e^x - 1 = 2^n (e^r - 1) + (2^n - 1),
// 2^n - 1 exact for n >= -24. The second sum cancels little: for n = 0 it is e^r - 1 itself, and
// for n <= -1 its value is below -0.29 where its terms are at most 0.5 and 0.21 in magnitude. So
// gce's 1 - p^q = -(p^q - 1) costs its exp and two operations, where a separate expm1 takes a
// polynomial of its own wherever |q log p| < 1 (every likely class). No branch to exp and e - 1
// for vectors of x <= -1 only: at eps(1000) the vectors of a row mix both, and the branch cost
// more than it saved (measured in gce's soft class pass).
struct ExpExpm1Avx2 {
  __m256 exp, expm1;
};
RK_AVX_INLINE ExpExpm1Avx2 exp_expm1_nonpositive_avx2(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 lo = _mm256_set1_ps(-87.33654475f);  // ln(FLT_MIN)
  const __m256 xc = _mm256_max_ps(x, lo);
  __m256 n;
  const __m256 r = reduce_ln2_avx2(xc, n);
  static constexpr float kInverseFactorials[] = {1.0f / 5040.0f, 1.0f / 720.0f, 1.0f / 120.0f,
                                                 1.0f / 24.0f,   1.0f / 6.0f,   0.5f};
  __m256 p = _mm256_set1_ps(kInverseFactorials[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kInverseFactorials[i]));
  const __m256 r_minus = _mm256_mul_ps(_mm256_fmadd_ps(p, r, one), r);  // e^r - 1
  const __m256 scale = pow2_avx2(n);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  const __m256 e = _mm256_blendv_ps(_mm256_fmadd_ps(scale, r_minus, scale), _mm256_setzero_ps(), under);
  const __m256 em1 = _mm256_fmadd_ps(scale, r_minus, _mm256_sub_ps(scale, one));
  return {e, _mm256_blendv_ps(em1, _mm256_set1_ps(-1.0f), under)};
}

RK_AVX_INLINE __m256 abs_avx2(__m256 x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }

// Which lanes of |x| are below bound (NaN is not): the branch of the functions below that skip a
// polynomial (or take a short one) for a whole vector. Rows of many classes have almost every
// probability far below 1/K, so one side of the branch is taken by nearly every vector.
RK_AVX_INLINE int lanes_below_avx2(__m256 abs_x, float bound) {
  return _mm256_movemask_ps(_mm256_cmp_ps(abs_x, _mm256_set1_ps(bound), _CMP_LT_OQ));
}
RK_AVX_INLINE bool any_below_avx2(__m256 abs_x, float bound) { return lanes_below_avx2(abs_x, bound) != 0; }
RK_AVX_INLINE bool all_below_avx2(__m256 abs_x, float bound) { return lanes_below_avx2(abs_x, bound) == 0xff; }

// expm1 for 8 floats given e = exp_avx2(x): the Taylor polynomial x + x^2 (1/2! + x/3! + ... +
// x^9/11!) for |x| < 1, whose truncation is below |x|^12/12! = 2.1e-9 (3.3e-9 relative at x =
// -1), and e - 1 beyond, where the subtraction cancels at most a factor e/(e - 1) = 1.6 of
// exp_avx2's error (about 4.3 ulp at x = 1, less further out). A vector with no |x| < 1 skips the
// polynomial. NaN, +-inf and underflow as exp_avx2. (For x <= 0 with e^x wanted too,
// exp_expm1_nonpositive_avx2 forms both from one reduction.)
RK_AVX_INLINE __m256 expm1_given_exp_avx2(__m256 x, __m256 e) {
  const __m256 large = _mm256_sub_ps(e, _mm256_set1_ps(1.0f));
  const __m256 abs_x = abs_avx2(x);
  if (!any_below_avx2(abs_x, 1.0f)) return large;
  static constexpr float kInverseFactorials[] = {
      1.0f / 39916800.0f, 1.0f / 3628800.0f, 1.0f / 362880.0f, 1.0f / 40320.0f, 1.0f / 5040.0f,
      1.0f / 720.0f,      1.0f / 120.0f,     1.0f / 24.0f,     1.0f / 6.0f,
  };
  __m256 p = _mm256_set1_ps(kInverseFactorials[0]);
  for (int i = 1; i < 9; ++i) p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(kInverseFactorials[i]));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(0.5f));
  const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(x, x), p, x);
  return _mm256_blendv_ps(large, small, _mm256_cmp_ps(abs_x, _mm256_set1_ps(1.0f), _CMP_LT_OQ));
}

// expm1 for 8 floats (expm1_given_exp_avx2). Sleef's u10 expm1 (1 ulp) cost half of the
// soft-target class pass of gce, one expm1 per class.
RK_AVX_INLINE __m256 expm1_avx2(__m256 x) { return expm1_given_exp_avx2(x, exp_avx2(x)); }

// 1 / (1 + x) for 8 floats, x > -1 (the soft rows' x_k = (e^eps - 1) a_k, a_k <= 1). Where
// every |x| < 1/16, the geometric series 1 - x + x^2 - ... + x^6, truncated below |x|^7 = 3.7e-9
// (0.06 ulp): in class_terms' pass, full of FMAs, the division's throughput bounds it otherwise.
RK_AVX_INLINE __m256 reciprocal_one_plus_avx2(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  if (!all_below_avx2(abs_avx2(x), 1.0f / 16.0f)) {
    return _mm256_div_ps(one, _mm256_add_ps(one, x));
  }
  const __m256 minus_x = _mm256_sub_ps(_mm256_setzero_ps(), x);
  __m256 p = one;
  for (int i = 0; i < 6; ++i) p = _mm256_fmadd_ps(p, minus_x, one);
  return p;
}

// k ln2 + log(1 + f) + c for |f| <= sqrt(2) - 1 by Cephes' logf polynomial (the one of Sleef-free
// AVX math libraries), k ln2 in two parts, ln2 = 0.693359375 - 2.12194440e-4: the first times k
// is exact.
RK_AVX_INLINE __m256 log_reduced_avx2(__m256 f, __m256 kf, __m256 c) {
  static constexpr float kCoefficients[] = {
      7.0376836292e-2f, -1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f,
      -1.6668057665e-1f, 2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f,
  };
  __m256 p = _mm256_set1_ps(kCoefficients[0]);
  for (int i = 1; i < 9; ++i) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(kCoefficients[i]));
  const __m256 f2 = _mm256_mul_ps(f, f);
  __m256 tail = _mm256_mul_ps(_mm256_mul_ps(p, f), f2);  // f^3 P(f)
  tail = _mm256_fmadd_ps(f2, _mm256_set1_ps(-0.5f), tail);  // - f^2 / 2
  tail = _mm256_fmadd_ps(kf, _mm256_set1_ps(-2.12194440e-4f), _mm256_add_ps(tail, c));
  return _mm256_fmadd_ps(kf, _mm256_set1_ps(0.693359375f), _mm256_add_ps(f, tail));
}

// log for 8 floats: x = 2^k m with m in [sqrt(1/2), sqrt(2)), log x = k ln2 + log(m), m - 1
// exact (Sterbenz). A subnormal x is scaled by 2^23 first, its exponent field being 0. x = 0
// gives -inf, x < 0 NaN, +inf and NaN themselves. Sleef's u10 log would be a library call per
// vector, in focal's weight (1 - p)^gamma among others.
RK_AVX_INLINE __m256 log_avx2(__m256 x) {
  const __m256 subnormal = _mm256_cmp_ps(x, _mm256_set1_ps(1.17549435e-38f), _CMP_LT_OQ);
  const __m256 scaled = _mm256_blendv_ps(x, _mm256_mul_ps(x, _mm256_set1_ps(8388608.0f)), subnormal);
  __m256i k;
  const __m256 m = split_exponent_avx2(scaled, k);
  const __m256 kf = _mm256_sub_ps(_mm256_cvtepi32_ps(k), _mm256_and_ps(subnormal, _mm256_set1_ps(23.0f)));
  __m256 y = log_reduced_avx2(_mm256_sub_ps(m, _mm256_set1_ps(1.0f)), kf, _mm256_setzero_ps());
  y = _mm256_blendv_ps(y, _mm256_set1_ps(-INFINITY), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(NAN), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
  y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ));
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN in, NaN out
}

// log1p(x) for |x| < 1/16 in every lane: the series x - x^2/2 + ... - x^6/6, truncated below
// |x|^7/7, 8.5e-9 of |x|, 0.14 ulp; x^2 times the rest keeps x exact, and -0 stays -0.
RK_AVX_INLINE __m256 log1p_series_avx2(__m256 x) {
  static constexpr float kSeries[] = {-1.0f / 6.0f, 1.0f / 5.0f, -1.0f / 4.0f, 1.0f / 3.0f};
  __m256 p = _mm256_set1_ps(kSeries[0]);
  for (int i = 1; i < 4; ++i) p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(kSeries[i]));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(-0.5f));
  return _mm256_fmadd_ps(_mm256_mul_ps(x, x), p, x);
}

// log1p for 8 floats by log_reduced_avx2: u = 1 + x = 2^k m with m in [sqrt(1/2), sqrt(2)),
// log1p(x) = k ln2 + log(m) + c. For k = 0 the
// polynomial takes x itself, the exact argument (u has rounded its low bits away, all there is of
// a small x); beyond, m - 1 is exact and c = (x - (u - 1)) / u restores what rounding 1 + x lost,
// a term below 2^-24 of a result >= 0.34 in magnitude, so a 12-bit reciprocal is enough. u = 0
// gives -inf, u < 0 NaN, +inf and NaN themselves. Sleef's u10 log1p cost 40 % of the class pass
// of a biased soft row (one log1p per class).
RK_AVX_INLINE __m256 log1p_avx2(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  // |x| < 1/16 in every lane (the soft rows' x_k = (e^eps - 1) a_k of all but the likeliest
  // classes): log1p_series_avx2. NaN takes the full path.
  if (all_below_avx2(abs_avx2(x), 1.0f / 16.0f)) return log1p_series_avx2(x);
  const __m256 u = _mm256_add_ps(one, x);
  __m256i k;
  const __m256 m = split_exponent_avx2(u, k);
  const __m256 unscaled = _mm256_castsi256_ps(_mm256_cmpeq_epi32(k, _mm256_setzero_si256()));
  const __m256 f = _mm256_blendv_ps(_mm256_sub_ps(m, one), x, unscaled);
  const __m256 lost = _mm256_mul_ps(_mm256_sub_ps(x, _mm256_sub_ps(u, one)), _mm256_rcp_ps(u));
  const __m256 c = _mm256_andnot_ps(unscaled, lost);
  __m256 y = log_reduced_avx2(f, _mm256_cvtepi32_ps(k), c);
  y = _mm256_blendv_ps(y, _mm256_set1_ps(-INFINITY), _mm256_cmp_ps(u, _mm256_setzero_ps(), _CMP_EQ_OQ));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(NAN), _mm256_cmp_ps(u, _mm256_setzero_ps(), _CMP_LT_OQ));
  y = _mm256_blendv_ps(y, u, _mm256_cmp_ps(u, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ));
  y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ));  // -0 stays -0
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN in, NaN out
}

// log x for 8 normal, finite, positive floats: log_avx2 without its subnormal scaling and its
// special cases.
RK_AVX_INLINE __m256 log_normal_avx2(__m256 x) {
  __m256i k;
  const __m256 m = split_exponent_avx2(x, k);
  return log_reduced_avx2(_mm256_sub_ps(m, _mm256_set1_ps(1.0f)), _mm256_cvtepi32_ps(k), _mm256_setzero_ps());
}

// log q for 8 floats given an estimate log_q, q and 1 - q: the estimate where q <= 3/4, and
// -log1p((1 - q) / q) beyond (1 / q = 1 + (1 - q) / q), where log q is small and an estimate from
// q or from its parts keeps only their rounding's absolute error; a vector with no such lane,
// nearly all of a row of many classes, skips it (Ops<float>::log_near_one).
RK_AVX_INLINE __m256 log_near_one_avx2(__m256 log_q, __m256 q, __m256 one_minus_q) {
  const __m256 likely = _mm256_cmp_ps(q, _mm256_set1_ps(0.75f), _CMP_GT_OQ);
  if (_mm256_movemask_ps(likely) == 0) return log_q;
  const __m256 near_one = _mm256_sub_ps(_mm256_setzero_ps(), log1p_avx2(_mm256_div_ps(one_minus_q, q)));
  return _mm256_blendv_ps(log_q, near_one, likely);
}

// log q of a soft row's biased class (q = e^eps a r, r = 1 / (1 + x), x = (e^eps - 1) a) for 8
// floats, given log a, q and 1 - q = (1 - a) r; x finite and > -1. Where every |x| < 1/16,
// log a + (eps - log1p(x)) by the series. Elsewhere log q itself, one log against log1p's longer
// path. A lane of q below FLT_MIN (a class whose exp underflowed, log a still finite) takes
// log a + (eps - x) instead: there |x| < max(1, e^-eps - 1) FLT_MIN (1 + x), where log1p(x) is
// x. A lane of q > 3/4 takes log_near_one_avx2: log q of the rounded q keeps the absolute error
// of that rounding, most of a likely class's loss at a large eps (q -> 1).
RK_AVX_INLINE __m256 log_biased_avx2(__m256 log_a, float eps, __m256 x, __m256 q, __m256 one_minus_q) {
  const __m256 eps_v = _mm256_set1_ps(eps);
  if (all_below_avx2(abs_avx2(x), 1.0f / 16.0f)) return _mm256_add_ps(log_a, _mm256_sub_ps(eps_v, log1p_series_avx2(x)));
  const __m256 flt_min = _mm256_set1_ps(1.17549435e-38f);
  const __m256 normal = _mm256_cmp_ps(q, flt_min, _CMP_GE_OQ);
  const __m256 tiny = _mm256_add_ps(log_a, _mm256_sub_ps(eps_v, x));
  const __m256 lq = _mm256_blendv_ps(tiny, log_normal_avx2(_mm256_max_ps(q, flt_min)), normal);
  return log_near_one_avx2(lq, q, one_minus_q);
}

}  // namespace rk
#endif
