// Per-row math of every loss, written once for the CPU and the CUDA kernels.
//
// A kernel hands each row to `row_forward` through a *Row* object that owns the row's values
// a_j = z_j + eps * [j == y] in the compute type T (float, or double for float64 input) and
// knows how to reduce over them:
//
//   T max_of(f)        max_j f(a_j)            T sum_of(f)      sum_j f(a_j)
//   T sum_others(f)    sum_{j != y} f(a_j)     void write_grad(f, g_y)   grad_j = f(a_j), grad_y = g_y
//   void remember(f)                  e_j = f(a_j) for later passes, then with the same f:
//   T sum_remembered(f, g)            sum_j g(e_j)          T sum_others_remembered(f, g)
//   void write_grad_remembered(f, g, g_y)                   grad_j = g(e_j), grad_y = g_y
//
// The CPU Row keeps e_j in a second buffer, which saves the transcendental f in every later
// pass (exp(a - m) of the label family, log p of bitemp); the CUDA Rows recompute g(f(a_j)),
// registers being scarcer than arithmetic there.
//
// `f` is a generic lambda. The CPU Row calls it with at::vec::Vectorized<T> for the vector
// body and with T for the tail; the CUDA Rows call it with T on every lane and combine lanes
// with warp shuffles (and shared memory for a block per row). Every elementwise formula is
// therefore written against Ops<V>, specialised for T here and for Vectorized<T> in
// cpu/vec_ops.h. Row reductions return the same value on every thread of a row, so the
// data-dependent loops below (bisection) stay uniform across a warp.
//
// A loss is a weighted sum of primitives (robustkernels/specs.py): the kernels receive the bit
// mask of the primitives present and the table of slot values (KERNEL_SLOTS: each primitive's
// weight and parameters), and evaluate each primitive present -- its math written once, in
// Terms below -- so any combination runs without a rebuild. Kernels are specialised only on
// which passes over the row the mask needs (row_variant), never on a float value.
//
// Gradient shape. Every mask but bitemp's has
//     dL/dz_j = c_pm (p_j - [j == y]) + c_p p_j + c_1 + c_h h_j + c_pq p_j^q
// with per-row scalars (RowCoeffs), h_j the focal derivative (nfl only) and q ngce's exponent
// (ngce only). The label lane is written separately with p_y - 1 = expm1(log p_y), so it never
// cancels as p_y -> 1.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__CUDACC__)
#define RK_HD __host__ __device__ __forceinline__
#define RK_ELEM RK_HD
#else
#define RK_HD inline
// Elementwise math called once per vector of a row: inlined into the pass, so that its
// intermediates stay in registers (a call per vector spills every vector register, all of them
// caller-saved; measured 3x slower on the soft-target class pass).
#define RK_ELEM inline __attribute__((always_inline))
#endif

// Primitive bits, slot indices and the term dispatch, generated from robustkernels/specs.py.
#include "loss_kinds.h"

namespace rk {

// The identity f / g of the Row interface, as a named type: a Row may recognise it and answer
// from work it has already done (the CPU Row takes the max while it copies the row, and the
// sum of the others while it remembers), so these reductions cost no extra pass.
struct Identity {
  template <class V>
  RK_HD V operator()(const V& v) const {
    return v;
  }
};

enum Reduction : int { kNone = 0, kMean = 1, kSum = 2 };

// Upper bound on bisection steps for the t2 < 1 normalisation. Each step halves a bracket at
// most -log_t(1/K) wide, so 64 steps reach the float64 resolution for any K (the reference
// uses the same count); the loop also stops as soon as the midpoint equals an end of the
// bracket, i.e. once the bracket cannot shrink in the compute precision, which gives the same
// result as running the remaining steps (they can no longer move it by more than an ulp).
constexpr int kMaxBisectionSteps = 64;

// The slots of the row math (`prm`) in the compute type, from the op's float64 params (host
// code). The derived slots hold differences that vanish at an end of a parameter's range, formed
// in double by robustkernels.specs.kernel_args: from the rounded parameter in fp32 they would
// keep only the rounding error -- a = 1 + 1e-7 is 1 + 1.19e-7 in fp32, so aul's a - 1, of which
// its loss and gradient are functions, came out 19 % too large (15 % error in the loss);
// bitemp's loss divides by 2 - t1 (16 % error at t1 = 2 - 1e-7).
template <class T>
inline void load_slots(const double* params, T* prm) {
  for (int i = 0; i < kNumSlots; ++i) prm[i] = static_cast<T>(params[i]);
}

// ---- elementwise operations on T and on vectors of T -------------------------------------------

template <class V>
struct Ops;

// e^x and e^x - 1 of one x (Ops<V>::exp_expm1_nonpositive).
template <class V>
struct ExpExpm1 {
  V exp, expm1;
};

template <>
struct Ops<float> {
  static RK_HD float exp(float x) { return ::expf(x); }
  // exp(a - max(row)), x in [-inf, 0]: rows holding a NaN or a +inf never get here (nan_row
  // below), so a vector backend may use a cheaper exp whose NaN input gives an unspecified value.
  static RK_HD float exp_shifted(float x) { return ::expf(x); }
  static RK_HD float log(float x) { return ::logf(x); }
  static RK_HD float expm1(float x) { return ::expm1f(x); }
  // e^x and e^x - 1 for x in [-inf, 0] (a vector backend forms both from one range reduction).
  static RK_HD ExpExpm1<float> exp_expm1_nonpositive(float x) { return {::expf(x), ::expm1f(x)}; }
  static RK_HD float reciprocal_one_plus(float x) { return 1.0f / (1.0f + x); }
  static RK_HD float log1p(float x) { return ::log1pf(x); }
  // log q of a soft row's biased class, q = e^eps a / (1 + x), x = (e^eps - 1) a, given log a, q
  // and 1 - q = (1 - a) / (1 + x): log a + (eps - log1p(x)) (a vector backend may take log q
  // itself where x is large), and for q > 3/4 -log1p((1 - q) / q) (1 / q = 1 + (1 - q) / q):
  // there log q is small and either other form keeps only the absolute error of its rounding
  // (of eps and log a, or of q), which at a large eps is most of a likely class's loss. Below
  // 3/4, |log q| > 0.29: the few ulp of relative error in q (mostly the exp's, through a) grow
  // at most 3.5-fold in log q.
  static RK_HD float log_biased(float log_a, float eps, float x, float q, float one_minus_q) {
    return log_near_one(log_a + (eps - ::log1pf(x)), q, one_minus_q);
  }
  // log q given an estimate log_q, q and 1 - q: -log1p((1 - q) / q) for q > 3/4, as above.
  static RK_HD float log_near_one(float log_q, float q, float one_minus_q) {
    return q > 0.75f ? -::log1pf(one_minus_q / q) : log_q;
  }
  // NaN-propagating: a NaN logit must poison the row, never be clamped away.
  static RK_HD float max(float a, float b) { return (a != a || a > b) ? a : b; }
  static RK_HD float clamp_min(float x, float low) { return x < low ? low : x; }
  static RK_HD float select_gt(float x, float threshold, float yes, float no) { return x > threshold ? yes : no; }
  // x != 0 ? v : 0 (NaN x keeps v): a term of coefficient 0 contributes exactly 0, even where v
  // is inf or NaN.
  static RK_HD float select_nonzero(float x, float v) { return x != 0.0f ? v : 0.0f; }
};

template <>
struct Ops<double> {
  static RK_HD double exp(double x) { return ::exp(x); }
  static RK_HD double exp_shifted(double x) { return ::exp(x); }
  static RK_HD double log(double x) { return ::log(x); }
  static RK_HD double expm1(double x) { return ::expm1(x); }
  static RK_HD ExpExpm1<double> exp_expm1_nonpositive(double x) { return {::exp(x), ::expm1(x)}; }
  static RK_HD double reciprocal_one_plus(double x) { return 1.0 / (1.0 + x); }
  static RK_HD double log1p(double x) { return ::log1p(x); }
  static RK_HD double log_biased(double log_a, double eps, double x, double q, double one_minus_q) {
    return log_near_one(log_a + (eps - ::log1p(x)), q, one_minus_q);
  }
  static RK_HD double log_near_one(double log_q, double q, double one_minus_q) {
    return q > 0.75 ? -::log1p(one_minus_q / q) : log_q;
  }
  static RK_HD double max(double a, double b) { return (a != a || a > b) ? a : b; }
  static RK_HD double clamp_min(double x, double low) { return x < low ? low : x; }
  static RK_HD double select_gt(double x, double threshold, double yes, double no) { return x > threshold ? yes : no; }
  static RK_HD double select_nonzero(double x, double v) { return x != 0.0 ? v : 0.0; }
};

template <class T>
RK_HD T infinity() {
  return std::numeric_limits<T>::infinity();
}

// log exp_t(u) = log [1 + (1 - t) u]_+ / (1 - t) for t != 1: -inf outside the support (t < 1).
// log1p keeps log p_y accurate as p_y -> 1 (u -> 0), where 1 + (1 - t) u would round to 1.
template <class V, class T>
RK_HD V log_exp_t(V u, T t) {
  using O = Ops<V>;
  return O::log1p(O::clamp_min(V(T(1) - t) * u, V(T(-1)))) * V(T(1) / (T(1) - t));
}

// exp_t(u) for u <= 0, as every caller has it (a - max times a positive factor, less a
// non-negative normaliser): its log is <= 0, so the exp of the softmax's shifted logits serves,
// without the overflow handling of a general exp.
template <class V, class T>
RK_HD V exp_t(V u, T t) {
  return Ops<V>::exp_shifted(log_exp_t(u, t));
}

// Focal weight w = (1 - p)^gamma and h = d focal / d log p... precisely d focal_k / d z_j =
// h_k (p_j - [j == k]) with h = w (1 - gamma p log p / (1 - p)), from log p:
//   * 1 - p = -expm1(log p) (no cancellation near p = 1);
//   * p log p / (1 - p) -> -1 as p -> 1 and -> 0 as p -> 0; both limits are selected
//     explicitly because the quotient is 0/0 or 0 * inf there.
template <class V, class T>
RK_ELEM V focal_weight_of(V one_minus_p, T gamma) {
  using O = Ops<V>;
  if (gamma == T(0)) return V(T(1));
  return O::exp(V(gamma) * O::log(one_minus_p));
}

template <class V, class T>
RK_ELEM V focal_weight(V lp, T gamma) {
  return focal_weight_of(V(T(0)) - Ops<V>::expm1(lp), gamma);
}

// h from log p, p, 1 - p and w = (1 - p)^gamma already at hand.
template <class V, class T>
RK_ELEM V focal_h_of(V lp, V p, V one_minus_p, V w, T gamma) {
  using O = Ops<V>;
  V ratio = O::select_gt(one_minus_p, V(T(0)), p * lp / one_minus_p, V(T(-1)));
  ratio = O::select_gt(p, V(T(0)), ratio, V(T(0)));
  return w * (V(T(1)) - V(gamma) * ratio);
}

template <class V, class T>
RK_ELEM V focal_h_from(V lp, V p, V w, T gamma) {
  return focal_h_of(lp, p, V(T(0)) - Ops<V>::expm1(lp), w, gamma);
}

template <class V, class T>
RK_ELEM V focal_h(V lp, T gamma) {
  return focal_h_from(lp, Ops<V>::exp(lp), focal_weight(lp, gamma), gamma);
}

// ngce's base L = (1 - p^q) / q times q, elementwise: -expm1(q log p), and p^q (its d = p^q).
// The factor 1 / q is applied once, to the row sum. expm1, not 1 - p^q: that cancels for small q
// (the ngce default is q = 0.1) and as p -> 1; p^q from exp, not 1 + expm1, which loses a small
// p^q.
template <class V, class T>
RK_ELEM V one_minus_pow(V lp, T q, V& pow_q) {
  const V x = V(q) * lp;
  pow_q = Ops<V>::exp(x);
  return V(T(0)) - Ops<V>::expm1(x);
}

// ---- per-row scalars --------------------------------------------------------------------------

// Row sums of the base L of a normalised form L(p_y) / sum_k L(p_k): D = sum_k L(log p_k) and
// H = sum_k d_k with d = -dL/dlog p, so that dL(log p_k)/dz_j = d_k (p_j - [j == k]).
template <class T>
struct BaseSums {
  T D = 0;
  T H = 0;
};

template <class T>
struct RowStats {
  T lpy = 0;  // log p_y
  int64_t K = 0;
  BaseSums<T> ce;     // nce: L = -log p, d = 1
  BaseSums<T> focal;  // nfl: L = focal, d = h
  BaseSums<T> gce;    // ngce: L = (1 - p^q) / q, d = p^q
};

template <class T>
struct RowCoeffs {
  T loss = 0;
  T pm = 0;   // coefficient of p_j - [j == y]
  T p = 0;    // coefficient of p_j
  T one = 0;  // constant
  T h = 0;    // coefficient of h_j (nfl)
  T pq = 0;   // coefficient of p_j^q, q of ngce (ngce)
};

// The primitives of log p_y alone, of weight w, each adding its value to `loss` and to `pm` the
// coefficient c_pm of its gradient: L = f(log p_y) has dL/dz_j = -f'(log p_y) (p_j - [j == y]),
// so c_pm = -f' (f' the derivative with respect to log p). Every 1 - p_y is given from
// -expm1(log p_y) or an equally accurate form. V is T for one label (the integer-label rows) or
// a vector of T (the soft-target rows evaluate every class at once, at log q_k): the parameters
// stay scalars of T, and what depends on them only is formed once, in T.
template <class T, class V = T>
struct LabelTerms {
  using O = Ops<V>;
  using S = Ops<T>;
  V& loss;
  V& pm;
  int64_t K;
  V lpy, py, one_minus_py;

  RK_ELEM void ce(T w) {
    loss = loss - V(w) * lpy;
    pm = pm + V(w);
  }
  RK_ELEM void mae(T w) {  // w (1 - p_y)
    loss = loss + V(w) * one_minus_py;
    pm = pm + V(w) * py;
  }
  // Divisions by a parameter are multiplications by its reciprocal, formed once in T: a vector
  // division per class costs the soft class pass more than the rest of its arithmetic.
  RK_ELEM void gce(T w, T q) {  // (1 - p_y^q) / q
    // q log p_y <= 0 (q > 0; log p_y > 0 only by a rounding, far below overflow), never NaN in
    // a row that gets here: the exp of a softmax shift, without exp's overflow handling.
    const ExpExpm1<V> pq = O::exp_expm1_nonpositive(V(q) * lpy);
    loss = loss + V(-w / q) * pq.expm1;
    pm = pm + V(w) * pq.exp;
  }
  RK_ELEM void agce(T w, T a, T q) {
    // (a+1)^q - (a+p)^q = -(a+1)^q expm1(q l), l = log((a+p)/(a+1)): no cancellation near
    // p = 1. l is log1p(-(1-p)/(a+1)) while the ratio r = (a+p)/(a+1) is >= 1/2, and log r
    // below: as a -> 0 and p -> 0 the argument of log1p tends to -1, and 1 + x keeps only
    // ulp(1) / r of its relative accuracy (5e-3 error in the loss at a = 1e-7, q = 1e-8 and
    // p_y = 1e-6, where the loss tends to log(1/r)).
    const V a_plus_p = V(a) + py;
    const V inv_a_plus_1(T(1) / (a + T(1)));
    const V ratio = a_plus_p * inv_a_plus_1;
    const V l = O::select_gt(V(T(0.5)), ratio, O::log(ratio), O::log1p((V(T(0)) - one_minus_py) * inv_a_plus_1));
    loss = loss + V(w * -S::exp(q * S::log(a + T(1))) / q) * O::expm1(V(q) * l);
    pm = pm + V(w) * O::exp(V(q - T(1)) * O::log(a_plus_p)) * py;
  }
  // The loss and gradient read a - 1 (the derived slot formed on the host), never a - 1 of
  // the rounded a.
  RK_ELEM void aul(T w, T /*a*/, T q, T a_minus_1) {
    // (a-p)^q - (a-1)^q = (a-1)^q expm1(q log1p((1-p)/(a-1))), and a - p = (a-1) + (1-p): both
    // parts positive, where a - p itself would cancel for a -> 1 and p -> 1.
    const T am1q = S::exp(q * S::log(a_minus_1));
    loss = loss + V(w * am1q / q) * O::expm1(V(q) * O::log1p(one_minus_py * V(T(1) / a_minus_1)));
    pm = pm + V(w) * O::exp(V(q - T(1)) * O::log(V(a_minus_1) + one_minus_py)) * py;
  }
  RK_ELEM void ael(T w, T a) {
    const V e = O::exp(py * V(T(-1) / a));
    loss = loss + V(w) * e;
    pm = pm + V(w / a) * e * py;
  }
  RK_ELEM void rce(T w, T A) {  // -A (1 - p_y)
    loss = loss + V(w * -A) * one_minus_py;
    pm = pm + V(w * -A) * py;
  }
  RK_ELEM void focal(T w, T gamma) {
    loss = loss + V(w) * (V(T(0)) - focal_weight(lpy, gamma)) * lpy;
    pm = pm + V(w) * focal_h(lpy, gamma);
  }
  // mae and rce are symmetric, so their normalised forms are constant rescalings.
  RK_ELEM void nmae(T w) {  // (1 - p_y) / (K - 1)
    mae(w / T(K - 1));
  }
  RK_ELEM void nrce(T w, T A) {  // (K - 1) / 4 * -A (1 - p_y), as published
    rce(w * (T(K - 1) / T(4)), A);
  }
};

// Every primitive but bitemp for one label (for_each_term, generated, calls the ones of the
// mask with their slots): those of log p_y alone, and the normalised forms, which also read the
// row sums of their base.
template <class T>
struct Terms : LabelTerms<T, T> {
  using O = Ops<T>;
  RowCoeffs<T>& c;
  const RowStats<T>& s;

  RK_HD void nce(T w) { normalized(w, -this->lpy, T(1), s.ce, c.one); }
  RK_HD void nfl(T w, T gamma) {
    normalized(w, -focal_weight(this->lpy, gamma) * this->lpy, focal_h(this->lpy, gamma), s.focal, c.h);
  }
  RK_HD void ngce(T w, T q) {
    normalized(w, -O::expm1(q * this->lpy) / q, O::exp(q * this->lpy), s.gce, c.pq);
  }

  // w N / D with N = L(log p_y), d_y = -L'(log p_y), D and H the row sums of the base:
  //   d(N / D)/dz_j = d_y / D (p_j - [j == y]) - (N / D) (H / D) p_j + (N / D) / D d_j,
  // the last term per element: c_elem is the coefficient of d_j (of 1 for nce, where d = 1).
  // (N / D) / D rather than N / D^2: no overflow of D^2. A class with p = 0 where L(0) is
  // infinite (ce, focal) makes D infinite: the term is 0 with gradient 0, its limit (and N / D
  // would be inf / inf at a label with p_y = 0).
  RK_HD void normalized(T w, T N, T d_y, const BaseSums<T>& sums, T& c_elem) {
    if (sums.D == infinity<T>()) return;  // D >= 0; a NaN stays NaN
    const T r = N / sums.D;
    c.loss += w * r;
    c.pm += w * d_y / sums.D;
    c.p += w * -r * (sums.H / sums.D);
    c_elem += w * r / sums.D;
  }
};

// Loss and gradient coefficients of one row from its statistics: every primitive of the mask.
template <class T>
RK_HD RowCoeffs<T> row_coeffs(unsigned mask, const T* prm, const RowStats<T>& s) {
  using O = Ops<T>;
  RowCoeffs<T> c;
  Terms<T> t{{c.loss, c.pm, s.K, s.lpy, O::exp(s.lpy), -O::expm1(s.lpy)}, c, s};
  for_each_term(mask, prm, t);
  return c;
}

// ---- kernel variants ----------------------------------------------------------------------------

// What a kernel is specialised on: the passes over the row a mask needs. bitemp has a row
// driver of its own. Of the normalised forms, nfl and ngce need a transcendental of every
// log p_k summed (and a term per element in the gradient): each is a compile-time part of the
// variant. nce's sums are one pass of a_k - m with closed forms otherwise (H = K, d = 1), taken
// on a bit test of the mask, the same for every row; label-only primitives need no pass.
constexpr unsigned kElementwiseSums = (1u << kNFL) | (1u << kNGCE);
constexpr unsigned kVariantLabel = 0;
constexpr unsigned kVariantNfl = 1u << kNFL;
constexpr unsigned kVariantNgce = 1u << kNGCE;
constexpr unsigned kVariantNflNgce = kVariantNfl | kVariantNgce;
constexpr unsigned kVariantBiTemp = kBiTempTerms;

RK_HD constexpr unsigned row_variant(unsigned mask) {
  return family_of(mask) == kBiTempFamily ? kVariantBiTemp : (sums_needed(mask) & kElementwiseSums);
}

template <unsigned V>
using Variant = std::integral_constant<unsigned, V>;

// Every value row_variant can take, for the host's switch below and the CUDA instantiations
// (row_kernels.cuh): X(variant, args...) for each.
#define RK_FOR_EACH_VARIANT(X, ...)                                                               \
  X(rk::kVariantLabel, __VA_ARGS__) X(rk::kVariantNfl, __VA_ARGS__) X(rk::kVariantNgce, __VA_ARGS__) \
      X(rk::kVariantNflNgce, __VA_ARGS__) X(rk::kVariantBiTemp, __VA_ARGS__)

#define RK_VARIANT_IS(V, _) || v == (V)
constexpr bool variant_listed(unsigned v) { return false RK_FOR_EACH_VARIANT(RK_VARIANT_IS, _); }
#undef RK_VARIANT_IS
constexpr bool every_variant_listed() {
  for (unsigned v = 0; v <= kElementwiseSums; ++v) {
    if ((v & ~kElementwiseSums) == 0 && !variant_listed(v)) return false;
  }
  return variant_listed(kVariantBiTemp);
}
static_assert(every_variant_listed(), "RK_FOR_EACH_VARIANT must list every value of row_variant");

// f(Variant<row_variant(mask)>{}): the one switch from a mask to a compiled variant (host code).
template <class F>
inline void dispatch_variant(unsigned mask, const F& f) {
  const unsigned v = row_variant(mask);
#define RK_CALL_IF_VARIANT(V, _) \
  if (v == (V)) return f(Variant<(V)>{});
  RK_FOR_EACH_VARIANT(RK_CALL_IF_VARIANT, _)
#undef RK_CALL_IF_VARIANT
}

// The elementwise row sums of the normalised forms of variant kV (nfl: sum_k focal_k and
// sum_k h_k; ngce: sum_k (1 - p_k^q) / q and sum_k p_k^q), and their gradient pass
// grad_j = c_p p_j + c_1 + c_h h_j + c_pq p_j^q. These defaults go through the Row interface and
// recompute the elementwise terms in each pass; a Row may overload them (found by
// argument-dependent lookup) to compute them once -- the CPU Row does, keeping h_j and p_j^q for
// the gradient pass. log p_k is formed as (a_k - m) - log s, never a_k - (m + log s): rounding
// m + log s at the scale of m costs ulp(m) absolute in every log p_k (2e-3 at logits around 3e4).
template <unsigned kV, class T, class Row>
RK_HD void elementwise_sums(Variant<kV>, Row& row, T m, T log_s, const T* prm, RowStats<T>& st) {
  if constexpr ((kV & (1u << kNFL)) != 0) {
    const T gamma = prm[kSlot_nfl_gamma];
    st.focal.D = row.sum_of([m, log_s, gamma](auto a) {
      using V = decltype(a);
      const V lp = (a - V(m)) - V(log_s);
      return V(T(0)) - focal_weight(lp, gamma) * lp;
    });
    st.focal.H = row.sum_of([m, log_s, gamma](auto a) {
      using V = decltype(a);
      return focal_h((a - V(m)) - V(log_s), gamma);
    });
  }
  if constexpr ((kV & (1u << kNGCE)) != 0) {
    const T q = prm[kSlot_ngce_q];
    st.gce.D = row.sum_of([m, log_s, q](auto a) {
                 using V = decltype(a);
                 V pow_q;  // unused: this pass recomputes
                 return one_minus_pow((a - V(m)) - V(log_s), q, pow_q);
               }) /
               q;
    st.gce.H = row.sum_of([m, log_s, q](auto a) {
      using V = decltype(a);
      return Ops<V>::exp(V(q) * ((a - V(m)) - V(log_s)));
    });
  }
}

// Gradient coefficients of the other lanes, scaled for the reduction.
template <class T>
struct GradCoeffs {
  T p, one, h, pq;
};

template <unsigned kV, class T, class Row>
RK_HD void write_elementwise_grad(Variant<kV>, Row& row, T m, T log_s, const T* prm, const GradCoeffs<T>& g,
                                  T g_y) {
  const T gamma = prm[kSlot_nfl_gamma], q = prm[kSlot_ngce_q];
  row.write_grad(
      [m, log_s, gamma, q, g](auto a) {
        using V = decltype(a);
        const V lp = (a - V(m)) - V(log_s);
        V out = Ops<V>::exp(lp) * V(g.p) + V(g.one);
        if constexpr ((kV & (1u << kNFL)) != 0) out = out + V(g.h) * focal_h(lp, gamma);
        if constexpr ((kV & (1u << kNGCE)) != 0) out = out + V(g.pq) * Ops<V>::exp(V(q) * lp);
        return out;
      },
      g_y);
}

// ---- row drivers --------------------------------------------------------------------------------

// log sum_k exp(a_k - m) with m = max_k a_k. When the label holds the max the sum is 1 + s,
// s = sum_{k != y} exp(a_k - m), and log1p(s) keeps log p_y = -log1p(s) accurate as p_y -> 1;
// log(1 + s) would round to 0 in fp32 once s < 6e-8 and make 1 - p_y exactly 0.
template <class T, class Row>
RK_HD T log_partition(Row& row, T m, T a_y) {
  using O = Ops<T>;
  const T others = row.sum_others([m](auto a) {
    using V = decltype(a);
    return Ops<V>::exp(a - V(m));
  });
  return a_y == m ? O::log1p(others) : O::log(O::exp(a_y - m) + others);
}

// Row policy of every backend (robustkernels.reference and the Triton kernels as well): a row
// holding a NaN or a +inf, or only -inf, is a NaN row -- NaN loss, NaN in every gradient lane.
// Propagation alone does not give it: with a +inf the loss is NaN but the gradient off the label
// is exp(a_j - inf) * c = 0, and a normalised form reads the p_k = 0 of the finite classes as its
// limit "loss 0". m = max_j a_j propagates NaN, so this one test on it decides; -inf entries in a
// row with a finite maximum are legal (classes with p = 0). m is the same in every thread of a
// row, so a kernel's threads leave together.
template <class T, class Row>
RK_HD bool nan_row(Row& row, T m, bool need_grad) {
  if (m > -infinity<T>() && m < infinity<T>()) return false;
  if (need_grad) {
    row.write_grad(
        [](auto a) {
          using V = decltype(a);
          return V(std::numeric_limits<T>::quiet_NaN());
        },
        std::numeric_limits<T>::quiet_NaN());
  }
  return true;
}

// Every mask but bitemp's: the softmax of the row, the sums its normalised forms need, then the
// coefficients of its terms. `scale` multiplies the gradient (1/count for mean, else 1).
template <class T, unsigned kV, class Row>
RK_HD T label_row(Row& row, unsigned mask, const T* prm, T a_y, bool need_grad, T scale) {
  using O = Ops<T>;
  const T m = row.max_of(Identity{});
  if (nan_row(row, m, need_grad)) return std::numeric_limits<T>::quiet_NaN();
  // As log_partition above, with exp(a_k - m) remembered for the gradient.
  auto exp_shifted = [m](auto a) {
    using V = decltype(a);
    return Ops<V>::exp_shifted(a - V(m));
  };
  row.remember(exp_shifted);
  const T others = row.sum_others_remembered(exp_shifted, Identity{});
  const T log_s = a_y == m ? O::log1p(others) : O::log(O::exp(a_y - m) + others);
  RowStats<T> st;
  st.K = row.K;
  st.lpy = (a_y - m) - log_s;  // not a_y - (m + log_s): the sum rounds log_s away when it is tiny
  if ((mask & (1u << kNCE)) != 0) {
    // D = -sum_k log p_k = K log s - sum_k (a_k - m): both parts >= 0, so no cancellation.
    st.ce.D = T(row.K) * log_s - row.sum_of([m](auto a) {
      using V = decltype(a);
      return a - V(m);
    });
    st.ce.H = T(row.K);
  }
  if constexpr (kV != kVariantLabel) elementwise_sums(Variant<kV>{}, row, m, log_s, prm, st);
  const RowCoeffs<T> c = row_coeffs(mask, prm, st);
  if (need_grad) {
    const GradCoeffs<T> g{scale * (c.pm + c.p), scale * c.one, scale * c.h, scale * c.pq};
    T g_y = scale * (c.pm * O::expm1(st.lpy) + c.p * O::exp(st.lpy) + c.one);
    if constexpr (kV == kVariantLabel) {
      const T c_e = g.p * O::exp(-log_s);  // p_j = exp(a_j - m) / s
      const T c_1 = g.one;
      row.write_grad_remembered(
          exp_shifted,
          [c_e, c_1](auto e) {
            using V = decltype(e);
            return e * V(c_e) + V(c_1);
          },
          g_y);
    } else {
      if constexpr ((kV & (1u << kNFL)) != 0) g_y += g.h * focal_h(st.lpy, prm[kSlot_nfl_gamma]);
      if constexpr ((kV & (1u << kNGCE)) != 0) g_y += g.pq * O::exp(prm[kSlot_ngce_q] * st.lpy);
      write_elementwise_grad(Variant<kV>{}, row, m, log_s, prm, g, g_y);
    }
  }
  return c.loss;
}

// n = 1 / (t - 1) when it is a whole number from 1 to 8 to the precision of T (t = 2, 1.5,
// 1.25, 1.2 -- the published t2 -- ...), else 0: exp_t(u) = [1 + (1 - t) u]^(-n) is then a few
// products and one division, where the general form costs a log1p and an exp.
template <class T>
RK_HD int whole_tempered_power(T t) {
  if (!(t > T(1))) return 0;
  const T n = T(1) / (t - T(1));
  if (!(n > T(0.5) && n < T(8.5))) return 0;
  const int whole = static_cast<int>(n + T(0.5));
  const T gap = n - T(whole);
  const T tolerance = T(16) * std::numeric_limits<T>::epsilon() * T(whole);
  return gap <= tolerance && gap >= -tolerance ? whole : 0;
}

// exp_t(u) for t > 1, u <= 0 and n = whole_tempered_power(t) > 0. The base is >= 1, so nothing
// cancels; at u = -inf it is inf and the value 0, the limit.
template <class V, class T>
RK_HD V exp_t_whole(V u, T t, int n) {
  const V base = V(T(1)) + V(T(1) - t) * u;
  V power = base;
  for (int i = 1; i < n; ++i) power = power * base;
  return V(T(1)) / power;
}

// sum_j exp_t((a_j - mu) factor) over the whole row (kOthers false) or over the classes other
// than the label (true), t > 1.
template <bool kOthers, class T, class Row>
RK_HD T tempered_partition(Row& row, T mu, T factor, T t, int whole) {
  auto sum = [&row](const auto& f) {
    if constexpr (kOthers) {
      return row.sum_others(f);
    } else {
      return row.sum_of(f);
    }
  };
  if (whole > 0) {
    return sum([mu, factor, t, whole](auto a) {
      using V = decltype(a);
      return exp_t_whole((a - V(mu)) * V(factor), t, whole);
    });
  }
  return sum([mu, factor, t](auto a) {
    using V = decltype(a);
    return exp_t((a - V(mu)) * V(factor), t);
  });
}

// lambda_t(a) - max(a) of the tempered softmax, as Google's implementation: logsumexp for t = 1,
// `num_iters` fixed-point steps for t > 1, bisection to convergence for t < 1.
template <class T, class Row>
RK_HD T bitemp_normalization(Row& row, T mu, T a_y, T t, int num_iters) {
  using O = Ops<T>;
  if (t == T(1)) return log_partition(row, mu, a_y);
  if (t > T(1)) {
    // a_hat = (a - mu) * Z^(1 - t): the iterate is a scalar multiple of a - mu.
    const int whole = whole_tempered_power(t);
    T factor = T(1);
    T partition = T(1);
    for (int i = 0; i < num_iters; ++i) {
      partition = tempered_partition<false>(row, mu, factor, t, whole);
      factor = O::exp((T(1) - t) * O::log(partition));
    }
    // Last partition with the label term apart: Z = 1 + others when the label holds the max
    // (exp_t(0) = 1), and log1p keeps the small normaliser -- hence log p_y -- accurate.
    const T others = tempered_partition<true>(row, mu, factor, t, whole);
    const T log_z = a_y == mu ? O::log1p(others) : O::log(exp_t((a_y - mu) * factor, t) + others);
    // -log_t(1/Z) = -expm1((t - 1) log Z) / (1 - t)
    return -O::expm1((t - T(1)) * log_z) / (T(1) - t);
  }
  const T support = T(-1) / (T(1) - t);
  const T effective_dim = row.sum_of([mu, support](auto a) {
    using V = decltype(a);
    return Ops<V>::select_gt(a - V(mu), V(support), V(T(1)), V(T(0)));
  });
  T lo = T(0);
  T hi = -O::expm1((t - T(1)) * O::log(effective_dim)) / (T(1) - t);  // -log_t(1/d)
  for (int step = 0; step < kMaxBisectionSteps; ++step) {
    const T mid = T(0.5) * (lo + hi);
    if (!(mid > lo && mid < hi)) break;  // converged (or NaN): identical in every thread
    const T partition = row.sum_of([mu, mid, t](auto a) {
      using V = decltype(a);
      return exp_t(a - V(mu) - V(mid), t);
    });
    if (partition < T(1)) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return T(0.5) * (lo + hi);
}

// Bi-tempered loss -log_t1(p_y) - (1 - sum_k p_k^(2-t1)) / (2-t1) with the implicit-function
// gradient dL/da_j = w_j - s_j sum_k w_k, w_k = (p_k - [k == y]) f_k, forget factor
// f = p^(t2-t1) (0 where p = 0: p is locally constant there, and this avoids 0 * inf),
// escort s = p^t2 / sum p^t2; all times the term's weight. p^(2 - t1) and p^t2 are exps of
// non-positive multiples of log p (t1 < 2, t2 > 0), hence exp_shifted; the forget factor's
// exponent 1 + t2 - t1 may be negative, and keeps the general exp.
template <class T, class Row>
RK_HD T bitemp_row(Row& row, const T* prm, T a_y, bool need_grad, T scale) {
  using O = Ops<T>;
  const T t1 = prm[kSlot_bitemp_t1], t2 = prm[kSlot_bitemp_t2];
  const T weight = prm[kSlot_bitemp_weight];
  const int num_iters = static_cast<int>(prm[kSlot_bitemp_num_iters]);
  scale *= weight;
  const T mu = row.max_of(Identity{});
  if (nan_row(row, mu, need_grad)) return std::numeric_limits<T>::quiet_NaN();
  const T lam = bitemp_normalization(row, mu, a_y, t2, num_iters);
  // log p_k, re-derived from a_k in each pass. (a - mu) - lam, not a - (mu + lam): the sum
  // would round a tiny lam away and with it 1 - p_y.
  auto log_p = [mu, lam, t2](auto a) {
    using V = decltype(a);
    const V u = (a - V(mu)) - V(lam);
    return t2 == T(1) ? u : log_exp_t(u, t2);
  };
  const T lpy = log_p(a_y);
  row.remember(log_p);
  const T two_minus_t1 = prm[kSlot_bitemp_two_minus_t1];  // from the host: 1 / (2 - t1) is the loss's scale
  const T sum_pow = row.sum_remembered(log_p, [two_minus_t1](auto lp) {
    using V = decltype(lp);
    return Ops<V>::exp_shifted(V(two_minus_t1) * lp);
  });
  const T minus_log_t1_py = t1 == T(1) ? -lpy : -O::expm1((T(1) - t1) * lpy) / (T(1) - t1);
  const T loss = minus_log_t1_py - (T(1) - sum_pow) / two_minus_t1;
  if (need_grad) {
    const T lowest = -std::numeric_limits<T>::max();
    const T escort_sum = row.sum_remembered(log_p, [t2](auto lp) {
      using V = decltype(lp);
      return Ops<V>::exp_shifted(V(t2) * lp);
    });
    // sum_k w_k = (p_y - 1) f_y + sum_{k != y} p_k f_k: the label term from expm1, the others
    // summed without it, so nothing cancels when p_y -> 1.
    auto p_times_f = [t1, t2, lowest](auto lp) {
      using V = decltype(lp);
      return Ops<V>::select_gt(lp, V(lowest), Ops<V>::exp(V(T(1) + t2 - t1) * lp), V(T(0)));
    };
    const T f_y = lpy > lowest ? O::exp((t2 - t1) * lpy) : T(0);
    const T w_y = O::expm1(lpy) * f_y;
    const T sum_w = w_y + row.sum_others_remembered(log_p, p_times_f);
    const T c_s = -scale * sum_w / escort_sum;
    row.write_grad_remembered(
        log_p,
        [p_times_f, scale, c_s, t2](auto lp) {
          using V = decltype(lp);
          return V(scale) * p_times_f(lp) + V(c_s) * Ops<V>::exp_shifted(V(t2) * lp);
        },
        scale * w_y + c_s * O::exp(t2 * lpy));
  }
  return weight * loss;
}

// The loss of one row (and its gradient when need_grad) for the primitives of `mask`, by the
// row driver of variant kV = row_variant(mask).
template <class T, unsigned kV, class Row>
RK_HD T row_forward(Row& row, unsigned mask, const T* prm, T a_y, bool need_grad, T scale) {
  if constexpr (kV == kVariantBiTemp) {
    return bitemp_row(row, prm, a_y, need_grad, scale);
  } else {
    return label_row<T, kV>(row, mask, prm, a_y, need_grad, scale);
  }
}

}  // namespace rk
