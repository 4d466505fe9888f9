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
// Gradient shape. Every loss except bitemp has
//     dL/dz_j = c_pm (p_j - [j == y]) + c_p p_j + c_1 + c_h h_j
// with per-row scalars (RowCoeffs) and h_j the focal derivative (NFL family only). The label
// lane is written separately with p_y - 1 = expm1(log p_y), so it never cancels as p_y -> 1.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define RK_HD __host__ __device__ __forceinline__
#else
#define RK_HD inline
#endif

// Kinds, parameter slots and families, generated from robustkernels/specs.py.
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

// The row math reads `prm`: the loss's parameters, then values derived from them that must be
// formed in double before the rounding to the compute type (load_params below).
constexpr int kParamSlots = kMaxParams + 1;
constexpr int kAulAMinusOne = kAUL_q + 1;     // aul: a - 1
constexpr int kBiTempTwoMinusT1 = kBITEMP_num_iters + 1;  // bitemp: 2 - t1
static_assert(kAulAMinusOne < kParamSlots && kBiTempTwoMinusT1 < kParamSlots, "derived slots fit");
// Upper bound on bisection steps for the t2 < 1 normalisation. Each step halves a bracket at
// most -log_t(1/K) wide, so 64 steps reach the float64 resolution for any K (the reference
// uses the same count); the loop also stops as soon as the midpoint equals an end of the
// bracket, i.e. once the bracket cannot shrink in the compute precision, which gives the same
// result as running the remaining steps (they can no longer move it by more than an ulp).
constexpr int kMaxBisectionSteps = 64;

// prm of the row math from the op's float64 parameters (host code). The derived slots hold
// differences that vanish at an end of a parameter's range, where forming them in fp32 from the
// rounded parameter keeps only the rounding error: a = 1 + 1e-7 is 1 + 1.19e-7 in fp32, so
// a - 1 -- of which aul's loss and gradient are functions -- came out 19 % too large (measured
// 15 % error in the loss); bitemp's loss divides by 2 - t1 (16 % error at t1 = 2 - 1e-7).
// In double both are exact up to the final rounding.
template <class T>
inline void load_params(int kind, const double* params, T* prm) {
  for (int i = 0; i < kParamSlots; ++i) prm[i] = T(0);
  const int n = num_params(kind);
  for (int i = 0; i < n; ++i) prm[i] = static_cast<T>(params[i]);
  if (kind == kAUL) prm[kAulAMinusOne] = static_cast<T>(params[kAUL_a] - 1.0);
  if (kind == kBITEMP) prm[kBiTempTwoMinusT1] = static_cast<T>(2.0 - params[kBITEMP_t1]);
}

// ---- elementwise operations on T and on vectors of T -------------------------------------------

template <class V>
struct Ops;

template <>
struct Ops<float> {
  static RK_HD float exp(float x) { return ::expf(x); }
  // exp(a - max(row)), x in [-inf, 0]: rows holding a NaN or a +inf never get here (nan_row
  // below), so a vector backend may use a cheaper exp whose NaN input gives an unspecified value.
  static RK_HD float exp_shifted(float x) { return ::expf(x); }
  static RK_HD float log(float x) { return ::logf(x); }
  static RK_HD float expm1(float x) { return ::expm1f(x); }
  static RK_HD float log1p(float x) { return ::log1pf(x); }
  // NaN-propagating: a NaN logit must poison the row, never be clamped away.
  static RK_HD float max(float a, float b) { return (a != a || a > b) ? a : b; }
  static RK_HD float clamp_min(float x, float low) { return x < low ? low : x; }
  static RK_HD float select_gt(float x, float threshold, float yes, float no) { return x > threshold ? yes : no; }
};

template <>
struct Ops<double> {
  static RK_HD double exp(double x) { return ::exp(x); }
  static RK_HD double exp_shifted(double x) { return ::exp(x); }
  static RK_HD double log(double x) { return ::log(x); }
  static RK_HD double expm1(double x) { return ::expm1(x); }
  static RK_HD double log1p(double x) { return ::log1p(x); }
  static RK_HD double max(double a, double b) { return (a != a || a > b) ? a : b; }
  static RK_HD double clamp_min(double x, double low) { return x < low ? low : x; }
  static RK_HD double select_gt(double x, double threshold, double yes, double no) { return x > threshold ? yes : no; }
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

template <class V, class T>
RK_HD V exp_t(V u, T t) {
  return Ops<V>::exp(log_exp_t(u, t));
}

// Focal weight w = (1 - p)^gamma and h = d focal / d log p... precisely d focal_k / d z_j =
// h_k (p_j - [j == k]) with h = w (1 - gamma p log p / (1 - p)), from log p:
//   * 1 - p = -expm1(log p) (no cancellation near p = 1);
//   * p log p / (1 - p) -> -1 as p -> 1 and -> 0 as p -> 0; both limits are selected
//     explicitly because the quotient is 0/0 or 0 * inf there.
template <class V, class T>
RK_HD V focal_weight(V lp, T gamma) {
  using O = Ops<V>;
  if (gamma == T(0)) return V(T(1));
  return O::exp(V(gamma) * O::log(V(T(0)) - O::expm1(lp)));
}

// h from log p, p and w = (1 - p)^gamma already at hand.
template <class V, class T>
RK_HD V focal_h_from(V lp, V p, V w, T gamma) {
  using O = Ops<V>;
  const V one_minus_p = V(T(0)) - O::expm1(lp);
  V ratio = O::select_gt(one_minus_p, V(T(0)), p * lp / one_minus_p, V(T(-1)));
  ratio = O::select_gt(p, V(T(0)), ratio, V(T(0)));
  return w * (V(T(1)) - V(gamma) * ratio);
}

template <class V, class T>
RK_HD V focal_h(V lp, T gamma) {
  return focal_h_from(lp, Ops<V>::exp(lp), focal_weight(lp, gamma), gamma);
}

// The two row sums of the NFL family, sum_k focal_k and sum_k h_k, and its gradient pass
// grad_j = c_p p_j + c_1 + c_h h_j. These defaults go through the Row interface and recompute
// the focal terms in each pass; a Row may overload them (found by argument-dependent lookup)
// to compute them once -- the CPU Row does, keeping h_j for the gradient pass.
// log p_k is formed as (a_k - m) - log s, never a_k - (m + log s): rounding m + log s at the
// scale of m costs ulp(m) absolute in every log p_k (2e-3 at logits around 3e4).
template <class T, class Row>
RK_HD void focal_sums(Row& row, T m, T log_s, T gamma, T& focal_sum, T& h_sum) {
  focal_sum = row.sum_of([m, log_s, gamma](auto a) {
    using V = decltype(a);
    const V lp = (a - V(m)) - V(log_s);
    return V(T(0)) - focal_weight(lp, gamma) * lp;
  });
  h_sum = row.sum_of([m, log_s, gamma](auto a) {
    using V = decltype(a);
    return focal_h((a - V(m)) - V(log_s), gamma);
  });
}

template <class T, class Row>
RK_HD void write_focal_grad(Row& row, T m, T log_s, T gamma, T c_p, T c_1, T c_h, T g_y) {
  row.write_grad(
      [m, log_s, c_p, c_1, c_h, gamma](auto a) {
        using V = decltype(a);
        const V lp = (a - V(m)) - V(log_s);
        return Ops<V>::exp(lp) * V(c_p) + V(c_1) + V(c_h) * focal_h(lp, gamma);
      },
      g_y);
}

// ---- per-row scalars of the label family and the focal family --------------------------------

template <class T>
struct RowStats {
  T lpy = 0;         // log p_y
  T sum_logp = 0;    // sum_k log p_k                     (NCE combinations)
  T focal_sum = 0;   // sum_k focal_k = -sum_k w_k log p_k (NFL family)
  T focal_hsum = 0;  // sum_k h_k                          (NFL family)
  bool any_zero = false;  // some log p_k == -inf          (NFL family)
  int64_t K = 0;
};

template <class T>
struct RowCoeffs {
  T loss = 0;
  T pm = 0;   // coefficient of p_j - [j == y]
  T p = 0;    // coefficient of p_j
  T one = 0;  // constant
  T h = 0;    // coefficient of h_j (NFL family)
};

// Single terms of weight w. Losses of p_y only: L = f(log p_y) has dL/dz_j = -f'(log p_y)
// (p_j - [j == y]), so c_pm = -f'. Every 1 - p_y is -expm1(log p_y).
template <class T>
struct Terms {
  using O = Ops<T>;
  RowCoeffs<T>& c;
  T lpy, py, one_minus_py;

  RK_HD void ce(T w) {
    c.loss += w * -lpy;
    c.pm += w;
  }
  RK_HD void mae(T w) {  // w (1 - p_y)
    c.loss += w * one_minus_py;
    c.pm += w * py;
  }
  RK_HD void gce(T w, T q) {  // (1 - p_y^q) / q
    c.loss += w * -O::expm1(q * lpy) / q;
    c.pm += w * O::exp(q * lpy);
  }
  RK_HD void agce(T w, T a, T q) {
    // (a+1)^q - (a+p)^q = -(a+1)^q expm1(q l), l = log((a+p)/(a+1)): no cancellation near
    // p = 1. l is log1p(-(1-p)/(a+1)) while the ratio r = (a+p)/(a+1) is >= 1/2, and log r
    // below: as a -> 0 and p -> 0 the argument of log1p tends to -1, and 1 + x keeps only
    // ulp(1) / r of its relative accuracy (5e-3 error in the loss at a = 1e-7, q = 1e-8 and
    // p_y = 1e-6, where the loss tends to log(1/r)).
    const T a_plus_p = a + py;
    const T ratio = a_plus_p / (a + T(1));
    const T l = ratio < T(0.5) ? O::log(ratio) : O::log1p(-one_minus_py / (a + T(1)));
    c.loss += w * -O::exp(q * O::log(a + T(1))) * O::expm1(q * l) / q;
    c.pm += w * O::exp((q - T(1)) * O::log(a_plus_p)) * py;
  }
  // a_minus_1 = a - 1 from the host (load_params), never a - 1 of the rounded a.
  RK_HD void aul(T w, T a_minus_1, T q) {
    // (a-p)^q - (a-1)^q = (a-1)^q expm1(q log1p((1-p)/(a-1))), and a - p = (a-1) + (1-p): both
    // parts positive, where a - p itself would cancel for a -> 1 and p -> 1.
    const T am1q = O::exp(q * O::log(a_minus_1));
    c.loss += w * am1q * O::expm1(q * O::log1p(one_minus_py / a_minus_1)) / q;
    c.pm += w * O::exp((q - T(1)) * O::log(a_minus_1 + one_minus_py)) * py;
  }
  RK_HD void ael(T w, T a) {
    const T e = O::exp(-py / a);
    c.loss += w * e;
    c.pm += w * e * py / a;
  }
  RK_HD void rce(T w, T A) {  // -A (1 - p_y)
    c.loss += w * -A * one_minus_py;
    c.pm += w * -A * py;
  }
  RK_HD void focal(T w, T gamma) {
    c.loss += w * -focal_weight(lpy, gamma) * lpy;
    c.pm += w * focal_h(lpy, gamma);
  }
  // NCE = log p_y / S with S = sum_k log p_k and dS/dz_j = 1 - K p_j:
  //   dL/dz_j = -(p_j - [j == y]) / S + K (log p_y / S) / S p_j - (log p_y / S) / S.
  // (log p_y / S) / S rather than log p_y / S^2: no overflow of S^2, and S = -inf (a class with
  // p = 0) gives loss 0 and gradient 0, the limit.
  RK_HD void nce(T w, const RowStats<T>& s) {
    const T r = lpy / s.sum_logp;
    c.loss += w * r;
    c.pm += w * (-T(1) / s.sum_logp);
    c.p += w * T(s.K) * r / s.sum_logp;
    c.one += w * -r / s.sum_logp;
  }
  // NFL = N / D with N = focal_y, D = sum_k focal_k, H = sum_k h_k:
  //   dL/dz_j = h_y / D (p_j - [j == y]) - (N / D) (H / D) p_j + (N / D) / D h_j.
  // A class with p = 0 makes D infinite: loss 0, gradient 0 (the reference's limit).
  RK_HD void nfl(T w, T gamma, const RowStats<T>& s) {
    if (s.any_zero) return;
    const T r = -focal_weight(lpy, gamma) * lpy / s.focal_sum;
    c.loss += w * r;
    c.pm += w * focal_h(lpy, gamma) / s.focal_sum;
    c.p += w * -r * (s.focal_hsum / s.focal_sum);
    c.h += w * r / s.focal_sum;
  }
};

// Loss and gradient coefficients of one row from its statistics; prm from load_params.
template <class T>
RK_HD RowCoeffs<T> row_coeffs(int kind, const T* prm, const RowStats<T>& s) {
  using O = Ops<T>;
  RowCoeffs<T> c;
  Terms<T> t{c, s.lpy, O::exp(s.lpy), -O::expm1(s.lpy)};
  switch (kind) {
    case kCE: t.ce(T(1)); break;
    case kMAE: t.mae(prm[kMAE_scale]); break;
    case kGCE: t.gce(T(1), prm[kGCE_q]); break;
    case kAGCE: t.agce(T(1), prm[kAGCE_a], prm[kAGCE_q]); break;
    case kAUL: t.aul(T(1), prm[kAulAMinusOne], prm[kAUL_q]); break;
    case kAEL: t.ael(T(1), prm[kAEL_a]); break;
    case kNCE: t.nce(T(1), s); break;
    case kFOCAL: t.focal(T(1), prm[kFOCAL_gamma]); break;
    case kNFL: t.nfl(T(1), prm[kNFL_gamma], s); break;
    case kRCE: t.rce(T(1), prm[kRCE_A]); break;
    case kSCE: t.ce(prm[kSCE_alpha]); t.rce(prm[kSCE_beta], prm[kSCE_A]); break;
    case kNCE_MAE: t.nce(prm[kNCE_MAE_alpha], s); t.mae(prm[kNCE_MAE_beta]); break;
    case kNF_MAE: t.nfl(prm[kNF_MAE_alpha], prm[kNF_MAE_gamma], s); t.mae(prm[kNF_MAE_beta]); break;
    case kNCE_RCE: t.nce(prm[kNCE_RCE_alpha], s); t.rce(prm[kNCE_RCE_beta], prm[kNCE_RCE_A]); break;
    case kNCE_AGCE:
      t.nce(prm[kNCE_AGCE_alpha], s);
      t.agce(prm[kNCE_AGCE_beta], prm[kNCE_AGCE_a], prm[kNCE_AGCE_q]);
      break;
    default: break;
  }
  return c;
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
// is exp(a_j - inf) * c = 0, and NFL reads the p_k = 0 of the finite classes as its limit
// "loss 0". m = max_j a_j propagates NaN, so this one test on it decides; -inf entries in a row
// with a finite maximum are legal (classes with p = 0). m is the same in every thread of a row,
// so a kernel's threads leave together.
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

// Label and focal families. `scale` multiplies the gradient (1/count for mean, else 1).
// kMayBeFocal = false lets a kernel specialised on the label family drop the focal passes.
template <class T, bool kMayBeFocal = true, class Row>
RK_HD T label_row(Row& row, int kind, const T* prm, T a_y, bool need_grad, T scale) {
  using O = Ops<T>;
  const T m = row.max_of(Identity{});
  if (nan_row(row, m, need_grad)) return std::numeric_limits<T>::quiet_NaN();
  // As log_partition below, with exp(a_k - m) remembered for the gradient.
  auto exp_shifted = [m](auto a) {
    using V = decltype(a);
    return Ops<V>::exp_shifted(a - V(m));
  };
  row.remember(exp_shifted);
  const T others = row.sum_others_remembered(exp_shifted, Identity{});
  const T log_s = a_y == m ? O::log1p(others) : O::log(O::exp(a_y - m) + others);
  const T lse = m + log_s;
  RowStats<T> st;
  st.K = row.K;
  st.lpy = (a_y - m) - log_s;  // not a_y - lse: m + log_s rounds log_s away when it is tiny
  if (uses_sum_logp(kind)) {
    // sum_k (a_k - m) - K log s: both parts <= 0, so no cancellation.
    st.sum_logp = row.sum_of([m](auto a) {
      using V = decltype(a);
      return a - V(m);
    }) - T(row.K) * log_s;
  }
  const bool focal = kMayBeFocal && family_of(kind) == kFocalFamily;
  const T gamma = focal ? prm[focal_gamma_slot(kind)] : T(0);
  if (focal) {
    focal_sums(row, m, log_s, gamma, st.focal_sum, st.focal_hsum);
    // log p_k == -inf  <=>  -(a_k - lse) > max finite (false for NaN, which must stay NaN).
    st.any_zero = row.max_of([lse](auto a) {
      using V = decltype(a);
      return Ops<V>::select_gt(V(lse) - a, V(std::numeric_limits<T>::max()), V(T(1)), V(T(0)));
    }) > T(0);
  }
  const RowCoeffs<T> c = row_coeffs(kind, prm, st);
  if (need_grad) {
    const T c_p = scale * (c.pm + c.p), c_1 = scale * c.one, c_h = scale * c.h;
    T g_y = scale * (c.pm * O::expm1(st.lpy) + c.p * O::exp(st.lpy) + c.one);
    if (focal) {
      g_y += c_h * focal_h(st.lpy, gamma);
      write_focal_grad(row, m, log_s, gamma, c_p, c_1, c_h, g_y);
    } else {
      const T c_e = c_p * O::exp(-log_s);  // p_j = exp(a_j - m) / s
      row.write_grad_remembered(
          exp_shifted,
          [c_e, c_1](auto e) {
            using V = decltype(e);
            return e * V(c_e) + V(c_1);
          },
          g_y);
    }
  }
  return c.loss;
}

// lambda_t(a) - max(a) of the tempered softmax, as Google's implementation: logsumexp for t = 1,
// `num_iters` fixed-point steps for t > 1, bisection to convergence for t < 1.
template <class T, class Row>
RK_HD T bitemp_normalization(Row& row, T mu, T a_y, T t, int num_iters) {
  using O = Ops<T>;
  if (t == T(1)) return log_partition(row, mu, a_y);
  if (t > T(1)) {
    // a_hat = (a - mu) * Z^(1 - t): the iterate is a scalar multiple of a - mu.
    T factor = T(1);
    T partition = T(1);
    for (int i = 0; i < num_iters; ++i) {
      partition = row.sum_of([mu, factor, t](auto a) {
        using V = decltype(a);
        return exp_t((a - V(mu)) * V(factor), t);
      });
      factor = O::exp((T(1) - t) * O::log(partition));
    }
    // Last partition with the label term apart: Z = 1 + others when the label holds the max
    // (exp_t(0) = 1), and log1p keeps the small normaliser -- hence log p_y -- accurate.
    const T others = row.sum_others([mu, factor, t](auto a) {
      using V = decltype(a);
      return exp_t((a - V(mu)) * V(factor), t);
    });
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
// escort s = p^t2 / sum p^t2. prm = (t1, t2, num_iters, 2 - t1).
template <class T, class Row>
RK_HD T bitemp_row(Row& row, const T* prm, T a_y, bool need_grad, T scale) {
  using O = Ops<T>;
  const T t1 = prm[kBITEMP_t1], t2 = prm[kBITEMP_t2];
  const int num_iters = static_cast<int>(prm[kBITEMP_num_iters]);
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
  const T two_minus_t1 = prm[kBiTempTwoMinusT1];  // from the host: 1 / (2 - t1) is the loss's scale
  const T sum_pow = row.sum_remembered(log_p, [two_minus_t1](auto lp) {
    using V = decltype(lp);
    return Ops<V>::exp(V(two_minus_t1) * lp);
  });
  const T minus_log_t1_py = t1 == T(1) ? -lpy : -O::expm1((T(1) - t1) * lpy) / (T(1) - t1);
  const T loss = minus_log_t1_py - (T(1) - sum_pow) / two_minus_t1;
  if (need_grad) {
    const T lowest = -std::numeric_limits<T>::max();
    const T escort_sum = row.sum_remembered(log_p, [t2](auto lp) {
      using V = decltype(lp);
      return Ops<V>::exp(V(t2) * lp);
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
          return V(scale) * p_times_f(lp) + V(c_s) * Ops<V>::exp(V(t2) * lp);
        },
        scale * w_y + c_s * O::exp(t2 * lpy));
  }
  return loss;
}

template <class T, class Row>
RK_HD T row_forward(Row& row, int kind, const T* prm, T a_y, bool need_grad, T scale) {
  if (kind == kBITEMP) return bitemp_row(row, prm, a_y, need_grad, scale);
  return label_row(row, kind, prm, a_y, need_grad, scale);
}

}  // namespace rk
