// Soft-target rows on the CPU: at::parallel_for over rows; the passes of soft_math.h's soft_row
// run over each row with ATen's SIMD vectors, keeping exp(z_j - m) and d_j in per-thread buffers
// for the gradient pass (one read of the logits and target, one write). Logits of the compute
// type are read in place, others converted once into a buffer. The class coefficients u come
// from a source per kind of row: the target row itself where it is contiguous and unweighted,
// else formed into a buffer (a probability target's by the exp pass, which reads it), and for
// unweighted label smoothing a constant plus the label's lane, with no buffer at all. A row of
// 4 K values stays in L1 for K up to about 2000, so each pass after the first costs its
// arithmetic only: the exp pass also finds j*, the target's sums and the next row's max, and the
// class pass is inlined whole (SoftClassTerms), its transcendentals those of the primitives
// present.
#include "cpu/soft_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/vec_ops.h"
#include "soft_math.h"

namespace rk {
namespace {

using at::vec::Vectorized;

template <class T>
Vectorized<T> with_lane(const Vectorized<T>& v, int64_t lane, T value) {
  T lanes[Vectorized<T>::size()];
  v.store(lanes);
  lanes[lane] = value;
  return Vectorized<T>::loadu(lanes);
}

template <class T>
Vectorized<T> zero_lane(const Vectorized<T>& v, int64_t lane) {
  return with_lane(v, lane, T(0));
}

// A row's class coefficients are u_k = base_k + extra [k == lane]: one lane may carry a share
// on top of the base (the label of a smoothed row), which each pass adds in a fix-up of its own
// (lane -1: none).
template <class T>
struct ExtraLane {
  int64_t lane = -1;
  T value = T(0);
};

// Where the exp pass of a row gets its class coefficients u_k: from the buffer they were written
// into (a label row's; a probability row of another dtype than the compute type's, converted by
// a pass of its own), or formed there from a probability target of the compute type, which the
// exp pass -- bound by its exp -- then reads from memory alongside (a separate pass over the
// target would leave the memory idle during the exp and the arithmetic idle during the read).
// Both leave u_k in the buffer for the later passes. The Row's type depends on the source's, so
// a source per target dtype would compile every pass once more per dtype.
template <class T>
struct StoredCoefficients {
  using Vec = Vectorized<T>;
  static constexpr bool kNonzero = false;
  static constexpr bool kUniform = false;
  T* u;
  bool bad_row = false;  // a negative or NaN probability, found while u was formed

  Vec load(int64_t j) { return Vec::loadu(u + j); }
  T load_one(int64_t j) { return u[j]; }
  Vec base(int64_t j) const { return Vec::loadu(u + j); }
  T base_one(int64_t j) const { return u[j]; }
  ExtraLane<T> extra() const { return {}; }
  bool bad() const { return bad_row; }
};

// The coefficients of a label row smoothed without class weights: alpha / K for every class,
// and the label's 1 - alpha on top (its extra lane). Nothing is stored or read, where a buffer
// filled per row would take a store per class and a load per class in each of the three passes.
template <class T>
struct UniformCoefficients {
  using Vec = Vectorized<T>;
  static constexpr bool kNonzero = true;  // spread > 0: soft_rows_cpu uses it only then
  static constexpr bool kUniform = true;
  T spread;  // alpha / K
  T keep;    // 1 - alpha
  int64_t label;

  Vec load(int64_t /*j*/) const { return Vec(spread); }
  T load_one(int64_t /*j*/) const { return spread; }
  Vec base(int64_t /*j*/) const { return Vec(spread); }
  T base_one(int64_t /*j*/) const { return spread; }
  ExtraLane<T> extra() const { return {keep == T(0) ? -1 : label, keep}; }
  bool bad() const { return false; }
};

// u_k = w_k ((1 - alpha) t_k + alpha / K) of one class (w null: no class weights).
template <class T>
T probability_coefficient(T t_k, const T* w, int64_t k, T keep, T spread) {
  const T u_k = t_k * keep + spread;
  return w ? u_k * w[k] : u_k;
}

// probability_coefficient of every class of a probability row t (column stride `stride`),
// returning whether it holds a negative or NaN entry: the pass of its own of a target whose dtype
// is not the compute type.
template <class T, class tgt_t>
bool probability_coefficients(const tgt_t* t, int64_t stride, int64_t K, const T* w, T keep, T spread, T* u) {
  bool bad = false;
  for (int64_t j = 0; j < K; ++j) {
    const T tj = static_cast<T>(t[j * stride]);
    if (!(tj >= T(0))) bad = true;
    u[j] = probability_coefficient(tj, w, j, keep, spread);
  }
  return bad;
}

// The same coefficients of a target of the compute type, formed by the exp pass, and whether the
// row holds a negative or NaN entry.
template <class T>
struct ProbabilityCoefficients {
  using Vec = Vectorized<T>;
  static constexpr int64_t kLanes = Vec::size();
  static constexpr bool kNonzero = false;
  static constexpr bool kUniform = false;
  T* u;
  const T* t;
  int64_t stride;
  const T* w;
  T keep, spread;
  Vec low = Vec(T(0));  // the minimum of 0 and the entries read, NaN once one is NaN
  // u = t (a contiguous target, no weights, alpha = 0): the later passes read the target row
  // itself, which the exp pass brought into the cache, and u is never written.
  bool in_place = stride == 1 && w == nullptr && keep == T(1) && spread == T(0);

  const T* values() const { return in_place ? t : u; }
  Vec base(int64_t j) const { return Vec::loadu(values() + j); }
  T base_one(int64_t j) const { return values()[j]; }
  ExtraLane<T> extra() const { return {}; }

  Vec load_target(int64_t j) const {
    if (stride == 1) return Vec::loadu(t + j);
    T lanes[kLanes];
    for (int64_t i = 0; i < kLanes; ++i) lanes[i] = t[(j + i) * stride];
    return Vec::loadu(lanes);
  }

  Vec load(int64_t j) {
    const Vec tv = load_target(j);
    low = at::vec::minimum(low, tv);  // propagates NaN
    if (in_place) return tv;
    Vec uv = tv * Vec(keep) + Vec(spread);
    if (w) uv = uv * Vec::loadu(w + j);
    uv.store(u + j);
    return uv;
  }

  T load_one(int64_t j) {
    const T tj = t[j * stride];
    if (!(tj >= T(0))) low = Vec(-T(1));
    if (in_place) return tj;
    u[j] = probability_coefficient(tj, w, j, keep, spread);
    return u[j];
  }

  bool bad() const {
    T lanes[kLanes];
    low.store(lanes);
    for (int64_t i = 0; i < kLanes; ++i) {
      if (!(lanes[i] >= T(0))) return true;
    }
    return false;
  }
};

// How a class pass adds up its terms' loss field: as it is (a sum of u_k l_k), the lane j* left
// out as 0. of_one is one class's share before `scaled` applies the coefficient (a no-op here:
// the field holds u_k l_k already).
template <class T>
struct SummedLoss {
  using Vec = Vectorized<T>;
  static constexpr T kLeftOut = T(0);
  Vec acc = Vec(T(0));

  void add(const Vec& v) { acc = acc + v; }
  T lanes() const { return lane_sum(acc); }
  static T of_one(T loss) { return loss; }
  static T scaled(T sum, T /*u*/) { return sum; }
};

// The loss field as a factor f_k > 0 of uniform coefficients: sum_k u_k log f_k as the base
// coefficient times the log of the factors' product, formed `group` vectors at a time (the lane
// j* left out as 1); a class of the tail or the extra lane adds its log f_k, times its u_k.
template <class T>
struct LogProductLoss {
  using Vec = Vectorized<T>;
  static constexpr T kLeftOut = T(1);
  int64_t group;
  int64_t in_group = 0;
  Vec product = Vec(T(1)), acc_log = Vec(T(0));

  void add(const Vec& v) {
    product = product * v;
    if (++in_group == group) {
      acc_log = acc_log + Ops<Vec>::log(product);
      product = Vec(T(1));
      in_group = 0;
    }
  }
  T lanes() const { return lane_sum(acc_log + Ops<Vec>::log(product)); }
  static T of_one(T factor) { return Ops<T>::log(factor); }
  static T scaled(T sum, T u) { return u * sum; }
};

// The Row of soft_math.h over the buffers of one row: z (in the compute type), e_j, d_j, and
// the class coefficients of its Coefficients source. Sums over k != j* zero the lane j* in the
// vector that holds it, never subtract it afterwards.
template <class T, class scalar_t, class Coefficients>
struct SoftCpuRow {
  using Vec = Vectorized<T>;
  static constexpr int64_t kLanes = Vec::size();
  // soft_math.h: its passes are arithmetic-bound. Float32 logits only: every folded primitive is
  // one more compilation of the row's passes.
  static constexpr bool kFoldsSingleTerm = std::is_same_v<T, float> && std::is_same_v<scalar_t, float>;
  static constexpr bool kNonzeroCoefficients = Coefficients::kNonzero;
  // class_log_product_sums: for the rows of kFoldsSingleTerm, whose passes it adds one more of.
  static constexpr bool kUniformCoefficients = Coefficients::kUniform && kFoldsSingleTerm;
  const T* z;
  T* e;
  T* d;
  int64_t K;
  scalar_t* grad;
  T max_value;
  Coefficients coefficients;  // a probability row's are formed by the exp pass
  int64_t special = 0;
  bool have_d = false;
  // The next row's logits: the exp pass, bound by its exp, also reads them and forms their max
  // (logits of the compute type; others it only fetches, prefetch_line), so that row skips the
  // pass of its own over memory that row_max would be.
  const scalar_t* next_row = nullptr;
  static constexpr bool kCarriesMax = std::is_same_v<scalar_t, T>;
  bool has_next_max = false;
  T next_max = T(0);

  TargetSums<T> target = {};
  T others_e = T(0);   // sum_{j != j*} e_j
  T others_ue = T(0);  // sum_{j != j*} u_j e_j

  // find_special, target_sums, remember_exp and others_u_e in one pass over z and the coefficients (the
  // calls below answer from it): u_j and e_j stored, j* found in the first block that holds
  // z_j - m = 0, and the lane j* zeroed in that block's share of the sums over k != j*.
  void find_special(T m, unsigned sums) {
    if (sums == kSumUZ) {
      exp_pass<kSumUZ>(m);
    } else if (sums == kSumUE) {
      exp_pass<kSumUE>(m);
    } else {
      exp_pass<0u>(m);
    }
  }

  // kSums: the optional sums (ExpPassSums) to form, each a product and an accumulation per vector
  // that most rows never read.
  template <unsigned kSums>
  void exp_pass(T m) {
    constexpr bool kUZ = (kSums & kSumUZ) != 0, kUE = (kSums & kSumUE) != 0;
    Vec acc_u(T(0)), acc_uz(T(0)), acc_e(T(0)), acc_ue(T(0));
    bool found = false;
    int64_t j = 0;
    const scalar_t* next = next_row;
    Vec next_acc(-std::numeric_limits<T>::infinity());
    for (; j + kLanes <= K; j += kLanes) {
      if constexpr (kCarriesMax) {
        if (next) next_acc = at::vec::maximum(next_acc, Vec::loadu(next + j));  // propagates NaN
      } else {
        prefetch_line(next, j);
      }
      prefetch_line_for_write(grad, j);
      const Vec zm = Vec::loadu(z + j) - Vec(m);
      Vec uv = coefficients.load(j);
      Vec ev = Ops<Vec>::exp_shifted(zm);
      ev.store(e + j);
      if constexpr (kUZ) {
        acc_uz = acc_uz + (Coefficients::kNonzero ? uv * zm : Ops<Vec>::select_nonzero(uv, uv * zm));
      }
      if (!found) {
        const int zeros = zm.zero_mask();
        if (zeros != 0) {
          found = true;
          special = j + __builtin_ctz(static_cast<unsigned>(zeros));
          uv = zero_lane(uv, special - j);
          ev = zero_lane(ev, special - j);
        }
      }
      acc_u = acc_u + uv;
      acc_e = acc_e + ev;
      if constexpr (kUE) acc_ue = at::vec::fmadd(uv, ev, acc_ue);
    }
    T total_u = lane_sum(acc_u), total_uz = lane_sum(acc_uz), total_e = lane_sum(acc_e), total_ue = lane_sum(acc_ue);
    for (; j < K; ++j) {
      const T zm = z[j] - m;
      const T uj = coefficients.load_one(j);
      e[j] = Ops<T>::exp_shifted(zm);
      if constexpr (kUZ) total_uz += Ops<T>::select_nonzero(uj, uj * zm);
      if (!found && zm == T(0)) {
        found = true;
        special = j;
        continue;
      }
      total_u += uj;
      total_e += e[j];
      if constexpr (kUE) total_ue += uj * e[j];
    }
    if constexpr (kCarriesMax) {
      if (next) {
        next_max = lane_max(next_acc);
        for (int64_t k = K - K % kLanes; k < K; ++k) next_max = Ops<T>::max(next_max, next[k]);
        has_next_max = true;
      }
    }
    T u_star = coefficients.base_one(special);
    const ExtraLane<T> extra = coefficients.extra();
    if (extra.lane >= 0) {
      if constexpr (kUZ) total_uz += extra.value * (z[extra.lane] - m);
      if (extra.lane == special) {
        u_star += extra.value;
      } else {
        total_u += extra.value;
        if constexpr (kUE) total_ue += extra.value * e[extra.lane];
      }
    }
    target = {u_star, total_u, total_uz, coefficients.bad()};
    others_e = total_e;
    others_ue = total_ue;
  }

  TargetSums<T> target_sums(T /*m*/) const { return target; }

  T remember_exp(T /*m*/) const { return others_e; }

  T others_u_e() const { return others_ue; }

  template <class F>
  T sum_of(const F& f) const {
    Vec acc(T(0));
    int64_t j = 0;
    for (; j + kLanes <= K; j += kLanes) acc = acc + f(Vec::loadu(z + j));
    T total = lane_sum(acc);
    for (; j < K; ++j) total += f(z[j]);
    return total;
  }

  // The class and gradient passes work on local copies of the Row's fields and of the functors
  // they are given: the SIMD stores may alias anything, so members, and what the functors point
  // to, would be reloaded after every store; so would the accumulator `Loss` (SummedLoss,
  // LogProductLoss: how the terms' loss field adds up) if it were not copied (measured: gce's
  // class pass 10-20 % slower).
  template <class F, class Loss = SummedLoss<T>>
  ClassSums<T> class_sums(const F& terms, const Loss& loss_given = {}) {
    const F f = terms;
    Loss loss = loss_given;
    const Coefficients u = coefficients;
    const T m = max_value;
    const T *zr = z, *er = e;
    T* dr = d;
    const int64_t n = K, star = special;
    Vec acc_p(T(0)), acc_b(T(0));
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      ClassTerms<Vec> c = f(Vec::loadu(zr + j) - Vec(m), Vec::loadu(er + j), u.base(j));
      c.d.store(dr + j);
      Vec p = c.d + c.p_minus_d;
      if (star >= j && star < j + kLanes) {
        c.loss = with_lane(c.loss, star - j, Loss::kLeftOut);
        p = zero_lane(p, star - j);
        c.b = zero_lane(c.b, star - j);
      }
      loss.add(c.loss);
      acc_p = acc_p + p;
      acc_b = acc_b + c.b;
    }
    T loss_sum = loss.lanes();
    ClassSums<T> out{T(0), lane_sum(acc_p), lane_sum(acc_b)};
    for (; j < n; ++j) {
      const ClassTerms<T> c = f(zr[j] - m, er[j], u.base_one(j));
      dr[j] = c.d;
      if (j == star) continue;
      loss_sum += Loss::of_one(c.loss);
      out.p += c.d + c.p_minus_d;
      out.b += c.b;
    }
    out.loss = Loss::scaled(loss_sum, u.base_one(0));
    // The terms are linear in u: the extra lane's share is its terms at u = extra (the lane j*
    // has its own, from target_sums' u_{j*}).
    const ExtraLane<T> extra = u.extra();
    if (extra.lane >= 0 && extra.lane != star) {
      const int64_t y = extra.lane;
      const ClassTerms<T> c = f(zr[y] - m, er[y], extra.value);
      dr[y] += c.d;
      out.loss += Loss::scaled(Loss::of_one(c.loss), extra.value);
      out.p += c.d + c.p_minus_d;
      out.b += c.b;
    }
    have_d = true;
    return out;
  }

  // class_sums of terms whose `loss` is a positive factor f_k rather than a loss, over uniform
  // coefficients but for the extra lane: the loss sum is sum_{k != j*} u_k log f_k, the log of
  // the factors' product (of `group` vectors at a time, the most whose product stays a normal
  // float: the caller bounds the factors) rather than a log per class.
  template <class F>
  ClassSums<T> class_log_product_sums(const F& terms, int64_t group) {
    return class_sums(terms, LogProductLoss<T>{group});
  }

  template <class DOf, class G>
  void write_soft_grad(const DOf& d_of_given, const G& g_given, T special_value) const {
    const DOf d_of = d_of_given;
    const G g = g_given;
    const Coefficients u = coefficients;
    const T m = max_value;
    const T *zr = z, *er = e, *dr = d;
    scalar_t* out = grad;
    const int64_t n = K;
    const bool stored_d = have_d;
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      const Vec ev = Vec::loadu(er + j);
      const Vec dv = stored_d ? Vec::loadu(dr + j) : d_of(Vec::loadu(zr + j) - Vec(m), ev, u.base(j));
      store_as(g(ev, dv), out + j);
    }
    for (; j < n; ++j) {
      out[j] = static_cast<scalar_t>(g(er[j], stored_d ? dr[j] : d_of(zr[j] - m, er[j], u.base_one(j))));
    }
    // class_sums has added the extra lane's share into its stored d; a d formed here has not.
    const ExtraLane<T> extra = u.extra();
    if (!stored_d && extra.lane >= 0) {
      const int64_t y = extra.lane;
      out[y] = static_cast<scalar_t>(g(er[y], d_of(zr[y] - m, er[y], u.base_one(y) + extra.value)));
    }
    out[special] = static_cast<scalar_t>(special_value);
  }

  template <class F>
  void write_grad(const F& f, T special_value) const {
    const T* zr = z;
    scalar_t* out = grad;
    const int64_t n = K;
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) store_as(f(Vec::loadu(zr + j)), out + j);
    for (; j < n; ++j) out[j] = static_cast<scalar_t>(f(zr[j]));
    out[special] = static_cast<scalar_t>(special_value);
  }
};

// max_j z_j (NaN if the row holds a NaN), with z_j in the compute type copied into `out` where
// the logits are of another dtype (logits of the compute type are only read).
template <class T, class scalar_t>
T row_max(const scalar_t* src, int64_t K, T* out) {
  using Vec = Vectorized<T>;
  constexpr int64_t kLanes = Vec::size();
  Vec acc(-std::numeric_limits<T>::infinity());
  int64_t j = 0;
  for (; j + kLanes <= K; j += kLanes) {
    Vec v;
    if constexpr (std::is_same_v<scalar_t, T>) {
      v = Vec::loadu(src + j);
    } else {
      T lanes[kLanes];
      for (int64_t i = 0; i < kLanes; ++i) lanes[i] = static_cast<T>(src[j + i]);
      v = Vec::loadu(lanes);
      v.store(out + j);
    }
    acc = at::vec::maximum(acc, v);
  }
  T best = lane_max(acc);
  for (; j < K; ++j) {
    const T v = static_cast<T>(src[j]);
    if constexpr (!std::is_same_v<scalar_t, T>) out[j] = v;
    best = Ops<T>::max(best, v);
  }
  return best;
}

// u_k = (alpha / K) w_k + (1 - alpha) w_y [k == y] of label y (w null: no class weights). Rows
// without weights take UniformCoefficients instead, unless alpha / K rounds to 0.
template <class T>
void label_coefficients(int64_t y, int64_t K, const T* w, T keep, T spread, T* u) {
  using Vec = Vectorized<T>;
  constexpr int64_t kLanes = Vec::size();
  if (w == nullptr) {
    std::fill(u, u + K, spread);
    u[y] += keep;
    return;
  }
  int64_t j = 0;
  for (; j + kLanes <= K; j += kLanes) (Vec::loadu(w + j) * Vec(spread)).store(u + j);
  for (; j < K; ++j) u[j] = w[j] * spread;
  u[y] += keep * w[y];
}

// Every row: `fill(i, u)` returns {status, the row's coefficient source over the buffer u}, the
// status 0 (a row to compute), 1 (an ignored row: loss 0, gradient 0) or 2 (an invalid label:
// NaN row, its logits unused). A bad probability row is a NaN row through soft_row.
template <class scalar_t, class Fill>
void soft_rows(const SoftRowsCall& call, const Fill& fill, at::Tensor& rows, at::Tensor& grad_out) {
  using T = at::opmath_type<scalar_t>;
  const at::Tensor& logits = call.logits;
  const int64_t N = logits.size(0), K = logits.size(1);
  const int64_t row_stride = logits.stride(0);
  const scalar_t* zs = logits.const_data_ptr<scalar_t>();
  const T* eps = call.eps_rows.defined() ? call.eps_rows.const_data_ptr<T>() : nullptr;
  T prm[kNumSlots];
  load_slots(call.params.data(), prm);
  T* out = rows.mutable_data_ptr<T>();
  scalar_t* grad = grad_out.defined() ? grad_out.mutable_data_ptr<scalar_t>() : nullptr;
  const T scale = T(1) / static_cast<T>(call.denominator);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / K);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> buffer(4 * K);  // z, e, u, d
    T* z = buffer.data();
    T* u = z + 2 * K;
    bool carried = false;  // the previous row's exp pass formed this row's max (SoftCpuRow::next_row)
    T carried_max = T(0);
    for (int64_t i = begin; i < end; ++i) {
      scalar_t* grad_row = grad ? grad + i * K : nullptr;
      auto [status, coefficients] = fill(i, u);
      const bool have_max = std::exchange(carried, false);
      if (status != 0) {
        const T value = status == 1 ? T(0) : nan;
        out[i] = value;
        if (grad_row) std::fill(grad_row, grad_row + K, static_cast<scalar_t>(value));
        continue;
      }
      // Logits of the compute type are read in place (the row stays in L1/L2 between passes);
      // others once converted into the buffer z.
      const scalar_t* src = zs + i * row_stride;
      const T max_z = have_max ? carried_max : row_max<T>(src, K, z);
      const T* z_row = z;
      if constexpr (std::is_same_v<scalar_t, T>) z_row = src;
      SoftCpuRow<T, scalar_t, decltype(coefficients)> row{z_row, z + K, z + 3 * K, K, grad_row, max_z, coefficients};
      if (i + 1 < end) row.next_row = src + row_stride;
      out[i] = soft_row<T>(row, call.mask, prm, eps ? eps[i] : static_cast<T>(call.epsilon), grad_row != nullptr,
                           scale);
      carried = row.has_next_max;
      carried_max = row.next_max;
    }
  });
}

// The rows of a probability target t (row stride t_row, column stride t_col).
template <class scalar_t, class T, class tgt_t>
void probability_rows(const SoftRowsCall& call, const tgt_t* t, int64_t t_row, int64_t t_col, const T* w, T keep,
                      T spread, at::Tensor& rows, at::Tensor& grad) {
  if constexpr (std::is_same_v<tgt_t, T>) {
    auto fill = [=](int64_t i, T* u) {
      return std::pair{0, ProbabilityCoefficients<T>{u, t + i * t_row, t_col, w, keep, spread}};
    };
    soft_rows<scalar_t>(call, fill, rows, grad);
  } else {
    const int64_t K = call.logits.size(1);
    auto fill = [=](int64_t i, T* u) {
      const bool bad = probability_coefficients<T>(t + i * t_row, t_col, K, w, keep, spread, u);
      return std::pair{0, StoredCoefficients<T>{u, bad}};
    };
    soft_rows<scalar_t>(call, fill, rows, grad);
  }
}

}  // namespace

void soft_rows_cpu(const SoftRowsCall& call, at::Tensor& rows, at::Tensor& grad) {
  const at::Tensor& target = call.target;
  const int64_t K = call.logits.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, call.logits.scalar_type(), "robustkernels_soft_rows", [&] {
    using T = at::opmath_type<scalar_t>;
    using logits_t = scalar_t;  // the dispatch of the target's dtype below shadows scalar_t
    const T* w = call.weight.defined() ? call.weight.const_data_ptr<T>() : nullptr;
    const T keep = static_cast<T>(1.0 - call.alpha);
    const T spread = static_cast<T>(call.alpha / static_cast<double>(K));
    if (target.is_floating_point()) {
      const int64_t t_row = target.stride(0), t_col = target.stride(1);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, target.scalar_type(), "robustkernels_soft_target", [&] {
        using tgt_t = scalar_t;
        const tgt_t* t = target.const_data_ptr<tgt_t>();
        probability_rows<logits_t>(call, t, t_row, t_col, w, keep, spread, rows, grad);
      });
      return;
    }
    const at::Tensor labels = target.to(at::kLong);
    const int64_t* l = labels.const_data_ptr<int64_t>();
    const int64_t l_stride = labels.stride(0);
    const int64_t ignore_index = call.ignore_index;
    auto status = [=](int64_t y) { return y == ignore_index ? 1 : y < 0 || y >= K ? 2 : 0; };
    if (w == nullptr && spread > T(0)) {
      auto fill = [=](int64_t i, T* /*u*/) {
        const int64_t y = l[i * l_stride];
        return std::pair{status(y), UniformCoefficients<T>{spread, keep, y}};
      };
      soft_rows<scalar_t>(call, fill, rows, grad);
      return;
    }
    auto fill = [=](int64_t i, T* u) {
      const int64_t y = l[i * l_stride];
      const int row_status = status(y);
      if (row_status == 0) label_coefficients<T>(y, K, w, keep, spread, u);
      return std::pair{row_status, StoredCoefficients<T>{u}};
    };
    soft_rows<scalar_t>(call, fill, rows, grad);
  });
}

}  // namespace rk
