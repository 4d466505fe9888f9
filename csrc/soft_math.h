// Per-row math of the soft-target loss (probability targets, label smoothing; docs/drop-in.md),
// written once for the CPU and the CUDA kernels:
//
//   row loss = sum_k u_k l_k,   l_k = L(z + eps e_k, k),
//
// u the class coefficients of the row (from the target, the class weights and alpha; the kernels
// form them). With a = softmax(z) (unbiased), x_k = expm1(eps) a_k and r_k = 1 / (1 + x_k), the
// label's probability when k is the label is q_k = e^eps a_k r_k, and every term is one of
//
//   * a primitive of log p_y alone (LabelTerms of loss_math.h, evaluated per class at log q_k):
//     with l' its derivative with respect to log p (-c_pm), c_j = u_j l'(log q_j) r_j and
//         dL/dz_j = c_j - a_j sum_k c_k;
//   * nce, l_k = N_k / D_k with N_k = -log q_k and D_k = D0 - eps - K log r_k, D0 = -sum_j log a_j.
//     With A_k = w u_k / D_k and B_k = w u_k N_k / D_k^2 (w its weight),
//         dL/dz_j = -(A_j r_j - a_j sum_k A_k r_k) + sum_k B_k - K a_j sum_k B_k r_k - K B_j x_j r_j.
//
// Both are grad_j = d_j - a_j P + Q with per-class
//     d_k = c_k - A_k r_k - K B_k x_k r_k,   P = sum_k (c_k - A_k r_k + K B_k r_k),   Q = sum_k B_k,
// and each class's share of P is d_k + K B_k (r_k + x_k r_k = 1). So a row needs one pass that
// forms d_k and the three sums, and one that writes the gradient.
//
// The lane j* of the row's maximum (the first) is kept apart, as the label lane of the integer
// rows: e_{j*} = exp(z_{j*} - m) = 1 exactly, so S = 1 + others and log S = log1p(others) stays
// accurate as a_{j*} -> 1, 1 - a_{j*} = others / S, and its gradient is written as
//     d_{j*} (1 - a_{j*}) - a_{j*} (P - d_{j*}) + Q,   P - d_{j*} = sum_{k != j*} p_k + K B_{j*},
// which does not cancel when the row's mass and the target both sit on j* (a one-hot target
// near p = 1). The other lanes have a_k <= 1/2, where 1 - a_k is exact enough as it is.
//
// A Row of the soft kernels provides (f / d_of / g generic lambdas, called with T or with
// vectors of T as in loss_math.h):
//   T max_value                        max_j z_j (NaN if the row holds one)
//   void find_special(m, sums)         sets j*, the first j with z_j - m == 0; `sums` (ExpPassSums)
//                                      the optional sums below that the row will read
//   TargetSums<T> target_sums(m)       u_{j*}, sum_{k != j*} u_k, sum_k u_k (z_k - m) (if asked
//                                      for: kSumUZ), bad row
//   T remember_exp(m)                  e_j = exp(z_j - m) for later passes; sum_{j != j*} e_j
//   T others_u_e()                     sum_{k != j*} u_k e_k (if asked for: kSumUE)
//   T sum_of(f)                        sum_j f(z_j)
//   ClassSums<T> class_sums(f)         f(z - m, e, u) -> ClassTerms; the sums over k != j*
//   void write_soft_grad(d_of, g, v)   grad_j = g(e_j, d_j), d_j = d_of(z_j - m, e_j, u_j) (the
//                                      CPU Row reads the d_j of class_sums instead), grad_{j*} = v
//   void write_grad(f, v)              grad_j = f(z_j), grad_{j*} = v (NaN rows)
// and a Row of uniform coefficients (UniformCoefficientsRow) also
//   ClassSums<T> class_log_product_sums(f, group)
//                                      class_sums of terms whose loss is a factor f_k > 0: the
//                                      loss sum is sum_{k != j*} u_k log f_k
#pragma once

#include <utility>

#include "loss_math.h"

namespace rk {

// The sums a Row forms only when asked (a Row whose passes share nothing may form them anyway):
// each is read by one closed form of soft_row alone, ce at eps = 0 and the affine terms at eps = 0.
enum ExpPassSums : unsigned {
  kSumUZ = 1u,  // sum_k u_k (z_k - m)
  kSumUE = 2u,  // sum_{k != j*} u_k e_k
};

// A row's scalars, the same for every class.
template <class T>
struct SoftScalars {
  T log_s = 0;  // log S, S = sum_j exp(z_j - m)
  T inv_s = 1;  // 1 / S
  T eps = 0, em1 = 0, exp_eps = 1;
  bool biased = false;  // eps != 0: otherwise r = 1 and q = a, and no log1p per logit
  bool nce = false;     // the mask has nce and D0 is finite (an infinite D0 makes the term 0)
  T nce_d0 = 0;         // D0 = -sum_j log a_j = K log S - sum_j (z_j - m), both parts >= 0
  int64_t K = 0;
};

// One class's share of the row (docs at the top): its loss u_k l_k, d_k, p_k - d_k, and B_k.
template <class V>
struct ClassTerms {
  V loss, d, p_minus_d, b;
};

template <class T>
struct ClassSums {
  T loss = 0, p = 0, b = 0;
};

template <class T>
struct TargetSums {
  T u_star = 0;      // u_{j*}
  T u_others = 0;    // sum_{k != j*} u_k
  T u_zm = 0;        // sum_k u_k (z_k - m), a class of u_k = 0 adding 0 (z_k may be -inf)
  bool bad = false;  // a negative or NaN probability: a NaN row
};

// The primitives that need p_y or 1 - p_y (the others read log p_y only): q and 1 - q are then
// formed per class, else skipped.
constexpr unsigned kNeedsProbability = (1u << kMAE) | (1u << kAGCE) | (1u << kAUL) | (1u << kAEL) | (1u << kRCE) |
                                       (1u << kNMAE) | (1u << kNRCE);
// The primitives that read log q (the others read q and 1 - q only): of a biased class, log r =
// -log1p(x) -- its one transcendental -- is formed only for them; q = e^eps a r needs a division.
constexpr unsigned kNeedsLog = (1u << kCE) | (1u << kGCE) | (1u << kFOCAL) | (1u << kNCE);

// ClassTerms of the classes of one vector (or one class), from z - m, e = exp(z - m), 1 - a and
// u. 1 - q = (1 - a) r: no expm1 per logit, and exact as the 1 - a given. kNce and kBiased are
// s.nce and s.biased as compile-time flags: the pass of an unbiased row or one without nce then
// carries neither r's division nor nce's terms, nor the registers they hold. A nonzero kMask
// is the mask itself at compile time (a single label primitive): its pass then holds that
// primitive's arithmetic alone, with no branch on the mask and no registers for the others.
// kNonzeroU: u_k != 0 in every class (NonzeroCoefficients), so no term needs its select.
template <bool kNce, bool kBiased, unsigned kMask = 0, bool kNonzeroU = false, class T, class V>
RK_ELEM ClassTerms<V> class_terms(unsigned runtime_mask, const T* prm, const SoftScalars<T>& s, V zm, V e,
                                V one_minus_a, V u) {
  using O = Ops<V>;
  const unsigned mask = kMask != 0 ? kMask : runtime_mask;
  const V zero(T(0));
  const V a = e * V(s.inv_s);
  // log a: (z - m) - log S, never z - (m + log S); log q where a primitive of the mask reads it.
  V lq = zm - V(s.log_s);
  V q = a, omq = one_minus_a, r(T(1)), lr = zero, x = zero;
  if constexpr (kBiased) {
    x = V(s.em1) * a;
    // Only the lane j* can have a > 1/2 (a Row's vector passes leave it to a call with V = T;
    // the CUDA rows call with V = T for every lane). At eps < 0 its 1 + x = 1 - (1 - e^eps) a
    // cancels as a -> 1 (to 0 or below at eps = -19: an infinite loss), where (1 - a) + e^eps a,
    // both terms >= 0, keeps it to the accuracy of 1 - a; log r with it. Below 1/2, 1 + x >= 1/2
    // and log1p keeps a small x exact.
    bool split = false;
    if constexpr (std::is_same_v<V, T>) split = s.eps < T(0) && a > T(0.5);
    const V one_plus_x = split ? one_minus_a + V(s.exp_eps) * a : V(T(1)) + x;
    r = split ? V(T(1)) / one_plus_x : O::reciprocal_one_plus(x);  // 1 + x >= min(1, e^eps) > 0
    // log q near q = 1 reads q and 1 - q too (log_near_one).
    if ((mask & (kNeedsProbability | kNeedsLog)) != 0) {
      q = V(s.exp_eps) * a * r;
      omq = one_minus_a * r;
    }
    if ((mask & kNeedsLog) != 0) {
      const V log1p_x = split ? O::log(one_plus_x) : O::log1p(x);
      if constexpr (kNce) {  // nce reads log r itself
        lr = zero - log1p_x;
        lq = O::log_near_one(lq + (V(s.eps) + lr), q, omq);
      } else if (split) {
        lq = O::log_near_one(lq + (V(s.eps) - log1p_x), q, omq);  // log_biased with 1 + x above
      } else {
        lq = O::log_biased(lq, s.eps, x, q, omq);
      }
    }
  }
  V loss = zero, pm = zero;
  LabelTerms<T, V> terms{loss, pm, s.K, lq, q, omq};
  for_each_label_term(mask, prm, terms);
  ClassTerms<V> out{u * loss, zero - u * pm * r, zero, zero};
  if constexpr (kNce) {
    const V wu = V(prm[kSlot_nce_weight]) * u;
    const V D = V(s.nce_d0 - s.eps) - V(T(s.K)) * lr;
    const V ratio = (zero - lq) / D;  // N / D
    const V A = wu / D;
    const V B = wu * ratio / D;  // (N / D) / D: no overflow of D^2
    out.loss = out.loss + wu * ratio;
    out.d = out.d - (A + V(T(s.K)) * B * x) * r;
    out.p_minus_d = V(T(s.K)) * B;
    out.b = B;
  }
  // A class of coefficient 0 adds exactly 0 (its l_k is inf at a -inf logit).
  if constexpr (kNonzeroU) return out;
  out.loss = O::select_nonzero(u, out.loss);
  out.d = O::select_nonzero(u, out.d);
  if constexpr (kNce) {
    out.p_minus_d = O::select_nonzero(u, out.p_minus_d);
    out.b = O::select_nonzero(u, out.b);
  }
  return out;
}

// class_terms of the row's classes, as a Row's class_sums calls it. A named functor, not a
// lambda: its call is forced inline into the Row's pass (RK_ELEM), where a lambda's call per
// vector was left out of line, spilling every vector register.
// The row's scalars and the loss parameters are held by value: a Row that copies the functor into
// its pass keeps them in registers, where through a pointer they are reloaded after every vector
// store (the SIMD stores may alias anything) -- and what is formed from them, such as gce's
// -w / q, recomputed per vector, a scalar division each time.
template <class T, bool kNce, bool kBiased, unsigned kMask, bool kNonzeroU>
struct SoftClassTerms {
  unsigned mask;
  SoftScalars<T> s;
  T prm[kNumSlots];

  RK_HD SoftClassTerms(unsigned mask_, const T* prm_, const SoftScalars<T>& s_) : mask(mask_), s(s_) {
    for (int i = 0; i < kNumSlots; ++i) prm[i] = prm_[i];
  }

  template <class V>
  RK_ELEM ClassTerms<V> operator()(V zm, V e, V u) const {
    return class_terms<kNce, kBiased, kMask, kNonzeroU, T>(mask, prm, s, zm, e, V(T(1)) - e * V(s.inv_s), u);
  }
};

// d_k of a class-terms functor alone, for a Row that recomputes it in the gradient pass.
template <class Terms>
struct SoftClassD {
  Terms terms;

  template <class V>
  RK_ELEM V operator()(V zm, V e, V u) const {
    return terms(zm, e, u).d;
  }
};

// The gradient of the lane j*, as in the docs at the top.
template <class T>
RK_HD T star_gradient(const SoftScalars<T>& s, T others, const ClassTerms<T>& star, const ClassSums<T>& rest,
                      T scale) {
  const T q = rest.b + star.b;
  const T a_star = s.inv_s, one_minus_a_star = others * s.inv_s;
  return scale * ((star.d * one_minus_a_star - a_star * (rest.p + star.p_minus_d)) + q);
}

// The gradient grad_j = scale (d_j - a_j P + Q), the lane j* as in the docs at the top.
template <class T, class Row, class DOf>
RK_HD void write_soft_grad(Row& row, const DOf& d_of, const SoftScalars<T>& s, T others, const ClassTerms<T>& star,
                           const ClassSums<T>& rest, T scale) {
  const T p = rest.p + (star.d + star.p_minus_d);
  const T q = rest.b + star.b;
  const T g_star = star_gradient(s, others, star, rest, scale);
  const T c_e = s.inv_s * p;  // a_j P = e_j P / S
  row.write_soft_grad(
      d_of,
      [scale, c_e, q](auto e, auto d) {
        using V = decltype(e);
        return V(scale) * ((d - e * V(c_e)) + V(q));
      },
      g_star);
}

// write_soft_grad of a row whose d_k = u_k (cu + cue e_k) and Q = 0 (ce and the affine primitives
// at eps = 0, which have no class pass): grad_j = u_j (A + C e_j) + B e_j with the scale and
// a_j P = e_j P / S folded into A, B and C, three operations per lane where the general form
// takes six.
template <class T, class Row>
RK_HD void write_linear_soft_grad(Row& row, T cu, T cue, const SoftScalars<T>& s, T others, const ClassTerms<T>& star,
                                  const ClassSums<T>& rest, T scale) {
  const T p = rest.p + (star.d + star.p_minus_d);
  const T a = scale * cu, c = scale * cue, b = -scale * (s.inv_s * p);
  row.write_soft_grad(
      [a, b, c](auto /*zm*/, auto e, auto u) {
        using V = decltype(e);
        return u * (V(a) + V(c) * e) + V(b) * e;
      },
      [](auto /*e*/, auto grad) { return grad; }, star_gradient(s, others, star, rest, scale));
}

template <class T, class Row>
RK_HD T soft_nan_row(Row& row, bool need_grad) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  if (need_grad) {
    row.write_grad(
        [](auto a) {
          using V = decltype(a);
          return V(std::numeric_limits<T>::quiet_NaN());
        },
        nan);
  }
  return nan;
}

// A Row that sets `static constexpr bool kNonzeroCoefficients = true` promises u_k != 0 in every
// class of every row (unweighted label smoothing): its class pass skips the selects of a class
// of coefficient 0.
template <class Row, class = void>
struct NonzeroCoefficients : std::false_type {};
template <class Row>
struct NonzeroCoefficients<Row, std::enable_if_t<Row::kNonzeroCoefficients>> : std::true_type {};

// A Row that sets `static constexpr bool kUniformCoefficients = true` has the same coefficient
// in every class but one extra lane (unweighted label smoothing) and class_log_product_sums.
template <class Row, class = void>
struct UniformCoefficientsRow : std::false_type {};
template <class Row>
struct UniformCoefficientsRow<Row, std::enable_if_t<Row::kUniformCoefficients>> : std::true_type {};

// The class terms of ce at eps != 0 with its log split off: -log q_k = -log a_k - eps - log r_k,
// of which sum_k u_k (-log a_k) = U log S - sum_k u_k (z_k - m) comes from the exp pass's sums and
// sum_k u_k log r_k from the log of a product of the r_k (the loss field carries r_k), so the
// class pass holds one division per class and no log. d_k = -w u_k r_k as class_terms forms it.
template <class T>
struct CeBiasedFactors {
  T w;
  T em1_inv_s;  // (e^eps - 1) / S: x_k = (e^eps - 1) e_k / S

  template <class V>
  RK_ELEM ClassTerms<V> operator()(V /*zm*/, V e, V u) const {
    // A division, not reciprocal_one_plus's series where x is small: this pass holds few other
    // operations, so the divider runs beside them, where the series's test and seven FMAs per
    // vector lengthened the pass (measured on the CPU at eps = 0.3, 1 and 5.358).
    const V r = V(T(1)) / (V(T(1)) + V(em1_inv_s) * e);  // 1 + x >= min(1, e^eps) > 0
    const V zero(T(0));
    return {r, zero - V(w) * u * r, zero, zero};
  }
};

// soft_row of ce alone at eps != 0 on a Row of uniform coefficients: false (nothing written
// that a later pass does not overwrite) where the split form would lose the loss, so that the
// row takes the class pass with a log per class instead. Each r_k lies in [e^-eps, 1] (eps > 0)
// or [1, e^-eps], so a product of 80 / |eps| vectors of them stays a normal float. For eps > 0
// the two parts of -log q_k have opposite signs: where they cancel to below 1/16 of
// sum u_k (-log a_k) (q_k -> 1 in most classes, eps far above log K), the split form is refused.
template <class T, class Row>
RK_HD bool ce_uniform_biased_passes(Row& row, unsigned mask, const T* prm, const SoftScalars<T>& s, T others,
                                    const TargetSums<T>& ts, bool need_grad, T scale, T& loss) {
  const T abs_eps = s.eps < T(0) ? -s.eps : s.eps;
  const int64_t group = abs_eps * T(64) < T(80) ? 64 : static_cast<int64_t>(T(80) / abs_eps);
  if (group < 1) return false;
  const T w = prm[kSlot_ce_weight];
  const CeBiasedFactors<T> factors{w, s.em1 * s.inv_s};
  const ClassSums<T> rest = row.class_log_product_sums(factors, group);
  const T unbiased = ts.u_others * s.log_s - ts.u_zm;  // sum_{k != j*} u_k (-log a_k) >= 0
  const T others_loss = unbiased - (s.eps * ts.u_others + rest.loss);
  if (s.eps > T(0) && !(others_loss >= unbiased * T(0.0625))) return false;
  const ClassTerms<T> star =
      class_terms<false, true, 1u << kCE, true, T>(mask, prm, s, T(0), T(1), others * s.inv_s, ts.u_star);
  if (need_grad) write_soft_grad(row, SoftClassD<CeBiasedFactors<T>>{factors}, s, others, star, rest, scale);
  loss = w * others_loss + star.loss;
  return true;
}

// The class terms of gce alone at eps = 0 without its log and expm1: with E_k = exp(q (z_k - m)),
// a_k^q = S^-q E_k, so d_k = -w u_k a_k^q = c u_k E_k (c = -w S^-q) and u_k l_k = (w / q) u_k +
// d_k / q. The loss field carries d_k / q; gce_unbiased_passes adds (w / q) sum_{k != j*} u_k.
// That sum cancels little: a class k != j* has a_k <= 1/2, so 1 - a_k^q >= 1 - 2^-q, and for
// q >= 1/8 (kMinPowerQ) at most a factor 12 of fp32 is lost.
template <class T>
struct GceUnbiasedTerms {
  static constexpr double kMinPowerQ = 0.125;
  T q, inv_q, c;

  template <class V>
  RK_ELEM ClassTerms<V> operator()(V zm, V /*e*/, V u) const {
    const V d = V(c) * u * Ops<V>::exp_shifted(V(q) * zm);  // q (z - m) <= 0
    const V zero(T(0));
    return {d * V(inv_q), d, zero, zero};
  }
};

template <class T, class Row>
RK_HD T gce_unbiased_passes(Row& row, unsigned mask, const T* prm, const SoftScalars<T>& s, T others,
                            const TargetSums<T>& ts, bool need_grad, T scale) {
  const T w = prm[kSlot_gce_weight], q = prm[kSlot_gce_q];
  const GceUnbiasedTerms<T> terms{q, T(1) / q, -w * Ops<T>::exp(-q * s.log_s)};
  const ClassSums<T> rest = row.class_sums(terms);
  constexpr bool kNonzeroU = NonzeroCoefficients<Row>::value;
  const ClassTerms<T> star =
      class_terms<false, false, 1u << kGCE, kNonzeroU, T>(mask, prm, s, T(0), T(1), others * s.inv_s, ts.u_star);
  if (need_grad) write_soft_grad(row, SoftClassD<GceUnbiasedTerms<T>>{terms}, s, others, star, rest, scale);
  return (w / q) * ts.u_others + rest.loss + star.loss;
}

// The class pass and the gradient pass of soft_row, compiled for one (nce, biased) pair and,
// where kMask is nonzero, for that mask alone.
template <bool kNce, bool kBiased, unsigned kMask = 0, class T, class Row>
RK_HD T soft_class_passes(Row& row, unsigned mask, const T* prm, const SoftScalars<T>& s, T others,
                          const TargetSums<T>& ts, bool need_grad, T scale) {
  constexpr bool kNonzeroU = NonzeroCoefficients<Row>::value;
  const SoftClassTerms<T, kNce, kBiased, kMask, kNonzeroU> terms(mask, prm, s);
  const ClassSums<T> rest = row.class_sums(terms);
  const ClassTerms<T> star =
      class_terms<kNce, kBiased, kMask, kNonzeroU, T>(mask, prm, s, T(0), T(1), others * s.inv_s, ts.u_star);
  if (need_grad) write_soft_grad(row, SoftClassD<decltype(terms)>{terms}, s, others, star, rest, scale);
  return rest.loss + star.loss;
}

// A Row that sets `static constexpr bool kFoldsSingleTerm = true` gets soft_class_passes compiled
// per single label primitive: a pass it runs over L1-resident buffers (the CPU's) is bound by its
// arithmetic, where the generic mask's branches and spilled registers cost most of the pass.
template <class Row, class = void>
struct FoldsSingleTerm : std::false_type {};
template <class Row>
struct FoldsSingleTerm<Row, std::enable_if_t<Row::kFoldsSingleTerm>> : std::true_type {};

// The primitives with a pass of their own on such a Row: the single-term losses that take
// probability targets and label smoothing most (ce at eps = 0 needs no class pass at all).
using SingleTermPrimitives = std::integer_sequence<int, kCE, kMAE, kGCE, kAGCE, kRCE>;

// Whether `mask` is one of kPrimitives alone; if so, its passes ran and `loss` holds the row's.
template <bool kBiased, int... kPrimitives, class T, class Row>
RK_HD bool single_term_passes(std::integer_sequence<int, kPrimitives...>, Row& row, unsigned mask, const T* prm,
                              const SoftScalars<T>& s, T others, const TargetSums<T>& ts, bool need_grad, T scale,
                              T& loss) {
  return ((mask == 1u << kPrimitives &&
           (loss = soft_class_passes<false, kBiased, 1u << kPrimitives>(row, mask, prm, s, others, ts, need_grad,
                                                                          scale),
            true)) ||
          ...);
}

// C of a mask of affine primitives alone (kAffineTerms: l(p) = C (1 - p)): their loss at p = 0.
template <class T>
RK_HD T affine_coefficient(unsigned mask, const T* prm, int64_t K) {
  T c = T(0), unused_pm = T(0);
  LabelTerms<T, T> at_zero{c, unused_pm, K, T(0), T(0), T(1)};
  for_each_label_term(mask, prm, at_zero);
  return c;
}

// A row of affine primitives alone at eps = 0, where the row needs no class pass: with
// T1 = sum_k u_k e_k, the loss is C (U - T1 / S), d_k = -C u_k e_k / S (the derivative -C a_k
// times u_k, as class_terms forms it at r = 1), P = -C T1 / S and Q = 0. The loss is summed as
// u_{j*} C (1 - a_{j*}) plus C sum_{k != j*} u_k (1 - a_k), never C (U - T1 / S): that would
// cancel as a_{j*} -> 1.
template <class T, class Row>
RK_HD T affine_row(Row& row, T c, const SoftScalars<T>& s, T others, const TargetSums<T>& ts, bool need_grad,
                   T scale) {
  const T ue_others = row.others_u_e();
  const ClassTerms<T> star{c * ts.u_star * (others * s.inv_s), -c * ts.u_star * s.inv_s, T(0), T(0)};
  const ClassSums<T> rest{c * (ts.u_others - ue_others * s.inv_s), -c * ue_others * s.inv_s, T(0)};
  if (need_grad) write_linear_soft_grad(row, T(0), -c * s.inv_s, s, others, star, rest, scale);
  return star.loss + rest.loss;
}

// The class terms of affine primitives alone at eps != 0: l_k = C (1 - q_k) = C (1 - a_k) r_k,
// and with l'(log q) = -C q_k, d_k = -C u_k q_k r_k = -C e^eps u_k a_k r_k^2 -- the terms
// class_terms forms for them, without the selects of an unbounded term (every factor is
// finite, so u_k = 0 gives 0) and without the terms of other primitives.
template <class T>
struct AffineClassTerms {
  T c, c_exp_eps;  // C and C e^eps
  SoftScalars<T> s;

  template <class V>
  RK_ELEM ClassTerms<V> with_one_minus_a(V e, V one_minus_a, V u) const {
    const V a = e * V(s.inv_s);
    // A division, as in CeBiasedFactors; 1 + x as (1 - a) + e^eps a, which does not cancel at
    // eps << 0 for the lane j* (a -> 1), as 1 + (e^eps - 1) a does (class_terms).
    const V r = V(T(1)) / (one_minus_a + V(s.exp_eps) * a);
    const V ur = u * r;
    const V zero(T(0));
    return {V(c) * (one_minus_a * ur), zero - V(c_exp_eps) * (a * r) * ur, zero, zero};
  }

  template <class V>
  RK_ELEM ClassTerms<V> operator()(V /*zm*/, V e, V u) const {
    return with_one_minus_a(e, V(T(1)) - e * V(s.inv_s), u);
  }
};

template <class T, class Row>
RK_HD T affine_biased_passes(Row& row, T c, const SoftScalars<T>& s, T others, const TargetSums<T>& ts,
                             bool need_grad, T scale) {
  const AffineClassTerms<T> terms{c, c * s.exp_eps, s};
  const ClassSums<T> rest = row.class_sums(terms);
  const ClassTerms<T> star = terms.with_one_minus_a(T(1), others * s.inv_s, ts.u_star);
  if (need_grad) write_soft_grad(row, SoftClassD<AffineClassTerms<T>>{terms}, s, others, star, rest, scale);
  return rest.loss + star.loss;
}

// The loss of one row (and its gradient, times `scale`, when need_grad). `mask` holds only
// primitives of kSoftTargetTerms.
template <class T, class Row>
RK_HD T soft_row(Row& row, unsigned mask, const T* prm, T eps, bool need_grad, T scale) {
  using O = Ops<T>;
  const T m = row.max_value;
  if (!(m > -infinity<T>() && m < infinity<T>())) return soft_nan_row<T>(row, need_grad);  // as nan_row
  const bool ce_unbiased = mask == (1u << kCE) && eps == T(0);
  const bool affine = (mask & ~kAffineTerms) == 0;
  const bool ce_uniform_biased = UniformCoefficientsRow<Row>::value && mask == (1u << kCE) && eps != T(0);
  row.find_special(m, ce_unbiased || ce_uniform_biased ? kSumUZ : affine && eps == T(0) ? kSumUE : 0u);
  const TargetSums<T> ts = row.target_sums(m);
  if (ts.bad) return soft_nan_row<T>(row, need_grad);
  const T others = row.remember_exp(m);
  SoftScalars<T> s;
  s.K = row.K;
  s.log_s = O::log1p(others);
  s.inv_s = T(1) / (T(1) + others);
  s.eps = eps;
  s.biased = eps != T(0);
  if (s.biased) {
    s.em1 = O::expm1(eps);
    s.exp_eps = O::exp(eps);
  }
  if ((mask & (1u << kNCE)) != 0) {
    s.nce_d0 = T(s.K) * s.log_s - row.sum_of([m](auto z) {
      using V = decltype(z);
      return z - V(m);
    });
    s.nce = s.nce_d0 < infinity<T>();
  }
  if (ce_unbiased) {
    // ce at eps = 0: l_k = log S - (z_k - m) and c_k = -w u_k, so the row needs no pass of its
    // own: loss = w (U log S - sum_k u_k (z_k - m)), both parts >= 0, and d_k = -w u_k.
    const T w = prm[kSlot_ce_weight];
    const T loss = w * ((ts.u_star + ts.u_others) * s.log_s - ts.u_zm);
    if (need_grad) {
      const ClassTerms<T> star{T(0), -w * ts.u_star, T(0), T(0)};
      const ClassSums<T> rest{T(0), -w * ts.u_others, T(0)};
      write_linear_soft_grad(row, -w, T(0), s, others, star, rest, scale);
    }
    return loss;
  }
  if (affine) {
    const T c = affine_coefficient(mask, prm, s.K);
    return s.biased ? affine_biased_passes(row, c, s, others, ts, need_grad, scale)
                    : affine_row(row, c, s, others, ts, need_grad, scale);
  }
  if constexpr (UniformCoefficientsRow<Row>::value) {
    T loss = T(0);
    if (ce_uniform_biased && ce_uniform_biased_passes(row, mask, prm, s, others, ts, need_grad, scale, loss)) {
      return loss;
    }
  }
  if constexpr (FoldsSingleTerm<Row>::value) {
    if (mask == (1u << kGCE) && !s.biased && prm[kSlot_gce_q] >= T(GceUnbiasedTerms<T>::kMinPowerQ)) {
      return gce_unbiased_passes(row, mask, prm, s, others, ts, need_grad, scale);
    }
    T loss = T(0);
    const SingleTermPrimitives single;
    if (!s.nce && (s.biased ? single_term_passes<true>(single, row, mask, prm, s, others, ts, need_grad, scale, loss)
                            : single_term_passes<false>(single, row, mask, prm, s, others, ts, need_grad, scale,
                                                        loss))) {
      return loss;
    }
  }
  if (s.nce) {
    return s.biased ? soft_class_passes<true, true>(row, mask, prm, s, others, ts, need_grad, scale)
                    : soft_class_passes<true, false>(row, mask, prm, s, others, ts, need_grad, scale);
  }
  return s.biased ? soft_class_passes<false, true>(row, mask, prm, s, others, ts, need_grad, scale)
                  : soft_class_passes<false, false>(row, mask, prm, s, others, ts, need_grad, scale);
}

}  // namespace rk
