// CPU kernels: at::parallel_for over rows; each row is copied once into a per-thread buffer in
// the compute type (fp32, fp64 for float64 logits) with the bias added, and every pass of the
// shared row math (loss_math.h) then runs over that cached buffer with ATen's SIMD vectors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/soft_cpu.h"
#include "cpu/vec_ops.h"
#include "op_checks.h"

namespace rk {
namespace {

using at::vec::Vectorized;

// Row interface of loss_math.h over a contiguous buffer of K values of T.
template <class T, class scalar_t>
struct CpuRow {
  using Vec = Vectorized<T>;
  static constexpr int64_t kLanes = Vec::size();
  const T* a;
  T* cache;  // e_j of remember()
  int64_t K;
  int64_t y;
  scalar_t* grad;
  T max_value;                  // max_j a_j, taken by copy_biased_row while it wrote a
  mutable T others_sum = T(0);  // sum_{j != y} e_j, taken by remember() while it wrote e
  T* aux_h = nullptr;           // h_j of nfl (elementwise_sums below)
  T* aux_pq = nullptr;          // p_j^q of ngce (elementwise_sums below)
  const scalar_t* next_row = nullptr;  // the next row's logits, fetched by remember() (prefetch_line)

  // Answered from the copy pass and the remember pass: no extra pass over the row.
  T max_of(Identity) const { return max_value; }
  template <class F>
  T sum_others_remembered(const F&, Identity) const {
    return others_sum;
  }

  template <class F>
  T sum_range(const F& f, const T* src, int64_t lo, int64_t hi) const {
    Vec acc(T(0));
    int64_t j = lo;
    for (; j + kLanes <= hi; j += kLanes) acc = acc + f(Vec::loadu(src + j));
    T total = lane_sum(acc);
    for (; j < hi; ++j) total += f(src[j]);
    return total;
  }
  // e_j = f(a_j) into the cache, summing the e_j of the other classes on the way (the label
  // lane is zeroed in the sum, not subtracted afterwards: others must keep its relative
  // accuracy when p_y -> 1, where log p_y = -log1p(others)).
  template <class F>
  void remember(const F& f) const {
    Vec acc(T(0));
    const int64_t label_block = y - y % kLanes;
    const scalar_t* next = next_row;
    int64_t j = 0;
    for (; j + kLanes <= K; j += kLanes) {
      prefetch_line(next, j);
      prefetch_line_for_write(grad, j);
      Vec e = f(Vec::loadu(a + j));
      e.store(cache + j);
      if (j == label_block) {
        T lanes[kLanes];
        e.store(lanes);
        lanes[y - j] = T(0);
        e = Vec::loadu(lanes);
      }
      acc = acc + e;
    }
    T total = lane_sum(acc);
    for (; j < K; ++j) {
      cache[j] = f(a[j]);
      if (j != y) total += cache[j];
    }
    others_sum = total;
  }
  template <class F, class G>
  T sum_remembered(const F&, const G& g) const {
    return sum_range(g, cache, 0, K);
  }
  template <class F, class G>
  T sum_others_remembered(const F&, const G& g) const {
    return sum_range(g, cache, 0, y) + sum_range(g, cache, y + 1, K);
  }
  template <class F, class G>
  void write_grad_remembered(const F&, const G& g, T label_value) const {
    write_range(g, cache, label_value);
  }
  template <class F>
  T sum_of(const F& f) const {
    return sum_range(f, a, 0, K);
  }
  template <class F>
  T sum_others(const F& f) const {
    return sum_range(f, a, 0, y) + sum_range(f, a, y + 1, K);
  }
  template <class F>
  T max_of(const F& f) const {
    Vec acc(-std::numeric_limits<T>::infinity());
    int64_t j = 0;
    for (; j + kLanes <= K; j += kLanes) acc = at::vec::maximum(acc, f(Vec::loadu(a + j)));
    T best = lane_max(acc);
    for (; j < K; ++j) best = Ops<T>::max(best, f(a[j]));
    return best;
  }
  template <class F>
  void write_grad(const F& f, T label_value) const {
    write_range(f, a, label_value);
  }
  template <class F>
  void write_range(const F& f, const T* src, T label_value) const {
    int64_t j = 0;
    for (; j + kLanes <= K; j += kLanes) {
      store_as(f(Vec::loadu(src + j)), grad + j);
    }
    for (; j < K; ++j) grad[j] = static_cast<scalar_t>(f(src[j]));
    grad[y] = static_cast<scalar_t>(label_value);
  }
};

// The elementwise normalised forms (nfl, ngce) in two passes instead of recomputing their terms
// in each (loss_math.h's defaults): one pass forms, per element, w_j = (1 - p_j)^gamma, focal_j
// and h_j, and 1 - p_j^q and p_j^q, once, with p_j = e_j / s from the remembered
// e_j = exp(a_j - m), and keeps h_j and p_j^q; the gradient pass is then arithmetic only.
template <unsigned kV, class T, class S>
void elementwise_sums(Variant<kV>, CpuRow<T, S>& row, T m, T log_s, const T* prm, RowStats<T>& st) {
  using Vec = Vectorized<T>;
  constexpr int64_t kLanes = Vec::size();
  constexpr bool kFocal = (kV & (1u << kNFL)) != 0;
  constexpr bool kPow = (kV & (1u << kNGCE)) != 0;
  const T inv_s = std::exp(-log_s);
  const T gamma = prm[kSlot_nfl_gamma], q = prm[kSlot_ngce_q];
  // 1 - p_j without an expm1 per logit: a lane below the maximum (e_j < 1) has p_j <= 1/2 (a
  // p_j above 1/2 is the row's unique maximum), so 1 - e_j / S is exact to an ulp or two; a lane
  // at the maximum (e_j = 1) takes -expm1(log p) as loss_math.h does, formed once per row.
  const T one_minus_p_at_max = -std::expm1(-log_s);
  // focal_j, h_j, 1 - p_j^q and p_j^q of one vector or one element (those of the variant).
  auto terms = [m, log_s, inv_s, gamma, q, one_minus_p_at_max](auto a, auto e, auto& focal, auto& h,
                                                                auto& one_minus_pq, auto& pq) {
    using V = decltype(a);
    const V lp = (a - V(m)) - V(log_s);  // as in loss_math.h: never a - (m + log s)
    if constexpr (kFocal) {
      const V p = e * V(inv_s);
      const V one_minus_p = Ops<V>::select_gt(V(T(1)), e, V(T(1)) - p, V(one_minus_p_at_max));
      // gamma = 1/2 (the published nfl's): sqrt, correctly rounded, for exp(log(.) / 2).
      V w;
      if (gamma == T(0.5)) {
        if constexpr (std::is_same_v<V, T>) {
          w = std::sqrt(one_minus_p);
        } else {
          w = one_minus_p.sqrt();
        }
      } else {
        w = focal_weight_of(one_minus_p, gamma);
      }
      focal = V(T(0)) - w * lp;
      h = focal_h_of(lp, p, one_minus_p, w, gamma);
    }
    if constexpr (kPow) one_minus_pq = one_minus_pow(lp, q, pq);
  };
  Vec acc_focal(T(0)), acc_h(T(0)), acc_omp(T(0)), acc_pq(T(0));
  int64_t j = 0;
  for (; j + kLanes <= row.K; j += kLanes) {
    Vec focal, h, omp, pq;
    terms(Vec::loadu(row.a + j), Vec::loadu(row.cache + j), focal, h, omp, pq);
    if constexpr (kFocal) {
      h.store(row.aux_h + j);
      acc_focal = acc_focal + focal;
      acc_h = acc_h + h;
    }
    if constexpr (kPow) {
      pq.store(row.aux_pq + j);
      acc_omp = acc_omp + omp;
      acc_pq = acc_pq + pq;
    }
  }
  T focal_sum = lane_sum(acc_focal), h_sum = lane_sum(acc_h), omp_sum = lane_sum(acc_omp), pq_sum = lane_sum(acc_pq);
  for (; j < row.K; ++j) {
    T focal = T(0), h = T(0), omp = T(0), pq = T(0);
    terms(row.a[j], row.cache[j], focal, h, omp, pq);
    if constexpr (kFocal) row.aux_h[j] = h;
    if constexpr (kPow) row.aux_pq[j] = pq;
    focal_sum += focal, h_sum += h, omp_sum += omp, pq_sum += pq;
  }
  if constexpr (kFocal) st.focal = {focal_sum, h_sum};
  if constexpr (kPow) st.gce = {omp_sum / q, pq_sum};
}

template <unsigned kV, class T, class S>
void write_elementwise_grad(Variant<kV>, CpuRow<T, S>& row, T /*m*/, T log_s, const T* /*prm*/,
                            const GradCoeffs<T>& g, T g_y) {
  using Vec = Vectorized<T>;
  constexpr int64_t kLanes = Vec::size();
  constexpr bool kFocal = (kV & (1u << kNFL)) != 0;
  constexpr bool kPow = (kV & (1u << kNGCE)) != 0;
  const T c_e = g.p * std::exp(-log_s);  // p_j = e_j / s
  // grad_j formed in place over one of the kept buffers, then written out with the label lane.
  T* out = kFocal ? row.aux_h : row.aux_pq;
  int64_t j = 0;
  for (; j + kLanes <= row.K; j += kLanes) {
    Vec v = Vec::loadu(row.cache + j) * Vec(c_e) + Vec(g.one);
    if constexpr (kFocal) v = v + Vec(g.h) * Vec::loadu(row.aux_h + j);
    if constexpr (kPow) v = v + Vec(g.pq) * Vec::loadu(row.aux_pq + j);
    v.store(out + j);
  }
  for (; j < row.K; ++j) {
    T v = row.cache[j] * c_e + g.one;
    if constexpr (kFocal) v += g.h * row.aux_h[j];
    if constexpr (kPow) v += g.pq * row.aux_pq[j];
    out[j] = v;
  }
  row.write_range(Identity{}, out, g_y);
}

// a_j = z_j + bias [j == y] into `out` in the compute type; returns max_j a_j (NaN if the row
// holds a NaN), taken in the same pass.
template <class T, class scalar_t>
T copy_biased_row(const scalar_t* z, int64_t K, int64_t y, T bias, T* out) {
  using Vec = Vectorized<T>;
  constexpr int64_t kLanes = Vec::size();
  if constexpr (!std::is_same_v<scalar_t, T>) {
    for (int64_t j = 0; j < K; ++j) out[j] = static_cast<T>(z[j]);
    out[y] += bias;
    return CpuRow<T, scalar_t>{out, nullptr, K, y, nullptr, T(0)}.max_of([](auto a) { return a; });
  } else {
    Vec acc(-std::numeric_limits<T>::infinity());
    const int64_t label_block = y - y % kLanes;
    int64_t j = 0;
    for (; j + kLanes <= K; j += kLanes) {
      Vec v = Vec::loadu(z + j);
      if (j == label_block) {
        v.store(out + j);
        out[y] += bias;
        v = Vec::loadu(out + j);
      }
      v.store(out + j);
      acc = at::vec::maximum(acc, v);
    }
    for (; j < K; ++j) out[j] = z[j] + (j == y ? bias : T(0));
    T best = lane_max(acc);
    for (j = K - K % kLanes; j < K; ++j) best = Ops<T>::max(best, out[j]);
    return best;
  }
}

// `weight` (nullptr: none) scales row i's loss and gradient by w_{y_i}.
template <unsigned kV, class scalar_t, class label_t>
void forward_rows(const at::Tensor& logits, const at::Tensor& target, const at::Tensor* eps_rows,
                  const at::opmath_type<scalar_t>* weight, double epsilon, unsigned mask, c10::ArrayRef<double> params,
                  int64_t ignore_index, at::opmath_type<scalar_t> scale, at::Tensor& rows, scalar_t* grad) {
  using T = at::opmath_type<scalar_t>;
  const int64_t N = logits.size(0), K = logits.size(1);
  const int64_t row_stride = logits.stride(0);
  const scalar_t* z = logits.const_data_ptr<scalar_t>();
  const label_t* labels = target.const_data_ptr<label_t>();
  const int64_t label_stride = target.stride(0);
  const T* eps = eps_rows ? eps_rows->const_data_ptr<T>() : nullptr;
  T prm[kNumSlots];
  load_slots(params.data(), prm);
  T* out = rows.mutable_data_ptr<T>();
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / K);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    // The row, the values of remember(), and h_j and p_j^q of the elementwise normalised forms.
    constexpr int64_t kBuffers = 2 + ((kV & (1u << kNFL)) != 0) + ((kV & (1u << kNGCE)) != 0);
    std::vector<T> buffer(kBuffers * K);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t label = static_cast<int64_t>(labels[i * label_stride]);
      scalar_t* grad_row = grad ? grad + i * K : nullptr;
      if (label == ignore_index || label < 0 || label >= K) {
        // Ignored: loss 0, gradient 0. Invalid label: NaN row (see robustkernels/_labels.py);
        // the logits of such a row are never read.
        const T fill = label == ignore_index ? T(0) : nan;
        out[i] = fill;
        if (grad_row) std::fill(grad_row, grad_row + K, static_cast<scalar_t>(fill));
        continue;
      }
      const T bias = eps ? eps[i] : static_cast<T>(epsilon);
      const T row_max = copy_biased_row<T>(z + i * row_stride, K, label, bias, buffer.data());
      CpuRow<T, scalar_t> row{buffer.data(), buffer.data() + K, K, label, grad_row, row_max};
      if constexpr ((kV & (1u << kNFL)) != 0) row.aux_h = buffer.data() + 2 * K;
      if constexpr ((kV & (1u << kNGCE)) != 0) row.aux_pq = buffer.data() + (kBuffers - 1) * K;
      if (i + 1 < end) row.next_row = z + (i + 1) * row_stride;
      const T w = weight ? weight[label] : T(1);
      out[i] = w * row_forward<T, kV>(row, mask, prm, buffer[label], grad_row != nullptr, scale * w);
    }
  });
}

// The integer-label rows of every mask (loss_math.h's row_forward), each scaled by w_{y_i} when
// weight is defined; the gradient divided by `denominator` (1 but for mean).
void label_rows_cpu(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& eps,
                    const at::Tensor& weight, double epsilon, unsigned mask, c10::ArrayRef<double> params,
                    int64_t ignore_index, double denominator, at::Tensor& rows, at::Tensor& grad) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "robustkernels_loss_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    const T row_scale = T(1) / static_cast<T>(denominator);
    scalar_t* grad_ptr = grad.defined() ? grad.mutable_data_ptr<scalar_t>() : nullptr;
    const at::Tensor* eps_ptr = eps.defined() ? &eps : nullptr;
    const T* w = weight.defined() ? weight.const_data_ptr<T>() : nullptr;
    dispatch_variant(mask, [&](auto variant) {
      constexpr unsigned kV = decltype(variant)::value;
      if (target.scalar_type() == at::kLong) {
        forward_rows<kV, scalar_t, int64_t>(logits, target, eps_ptr, w, epsilon, mask, params, ignore_index,
                                            row_scale, rows, grad_ptr);
      } else {
        forward_rows<kV, scalar_t, int32_t>(logits, target, eps_ptr, w, epsilon, mask, params, ignore_index,
                                            row_scale, rows, grad_ptr);
      }
    });
  });
}

// What `mean` divides by for labels: sum_i w_{y_i} over the rows whose label is not ignore_index,
// their count without weight. An invalid label counts 1 without weight (its NaN must reach the
// mean, as F.cross_entropy's error would) and 0 with it (w_y does not exist; the mean is NaN
// anyway).
double label_denominator(const at::Tensor& target, const at::Tensor& weight, int64_t ignore_index) {
  const at::Tensor labels = target.to(at::kLong).contiguous();
  const int64_t* l = labels.const_data_ptr<int64_t>();
  const int64_t N = labels.size(0);
  if (!weight.defined()) {
    int64_t count = 0;
    for (int64_t i = 0; i < N; ++i) count += l[i] != ignore_index;
    return static_cast<double>(count);
  }
  const at::Tensor w = weight.to(at::kDouble);
  const double* wd = w.const_data_ptr<double>();
  const int64_t K = w.size(0);
  double total = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    if (l[i] != ignore_index && l[i] >= 0 && l[i] < K) total += wd[l[i]];
  }
  return total;
}

// `reduction` of the per-row losses: serial float64 sum in row order (the same bits whatever the
// number of threads); mean divides by `denominator` (0 / 0 = NaN when every row is ignored).
at::Tensor reduce_rows(const at::Tensor& rows, int64_t reduction, double denominator) {
  if (reduction == kNone) return rows;
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "robustkernels_loss_reduce", [&] {
    const scalar_t* r = rows.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < rows.size(0); ++i) total += static_cast<double>(r[i]);
  });
  if (reduction == kMean) total /= denominator;
  return at::scalar_tensor(total, rows.options());
}

std::tuple<at::Tensor, at::Tensor> loss_forward_cpu(const at::Tensor& logits_in, const at::Tensor& target,
                                                    const std::optional<at::Tensor>& epsilon_rows, double epsilon,
                                                    int64_t terms, c10::ArrayRef<double> params, int64_t ignore_index,
                                                    int64_t reduction, bool compute_grad) {
  check_forward_inputs(logits_in, target, epsilon_rows, terms, params, reduction);
  const at::Tensor logits = rows_unit_stride(logits_in);
  const int64_t N = logits.size(0), K = logits.size(1);
  const auto acc_dtype = loss_dtype(logits.scalar_type());
  at::Tensor rows = at::empty({N}, logits.options().dtype(acc_dtype));
  at::Tensor grad = compute_grad ? at::empty({N, K}, logits.options()) : at::Tensor();
  at::Tensor eps;
  if (epsilon_rows.has_value()) eps = epsilon_rows->to(acc_dtype).contiguous();
  // Rows that count for the mean: every label but ignore_index (invalid ones included, their
  // NaN must reach the mean), as F.cross_entropy.
  const double count = reduction == kMean ? label_denominator(target, at::Tensor(), ignore_index) : 1.0;
  label_rows_cpu(logits, target, eps, at::Tensor(), epsilon, static_cast<unsigned>(terms), params, ignore_index,
                 count, rows, grad);
  return {reduce_rows(rows, reduction, count), compute_grad ? grad : at::empty({0}, logits.options())};
}

std::tuple<at::Tensor, at::Tensor> soft_loss_forward_cpu(
    const at::Tensor& logits_in, const at::Tensor& target, const std::optional<at::Tensor>& epsilon_rows,
    const std::optional<at::Tensor>& weight, double epsilon, int64_t terms, c10::ArrayRef<double> params,
    int64_t ignore_index, double label_smoothing, int64_t reduction, bool compute_grad) {
  const bool soft =
      check_soft_inputs(logits_in, target, epsilon_rows, weight, terms, params, label_smoothing, reduction);
  const auto mask = static_cast<unsigned>(terms);
  const at::Tensor logits = rows_unit_stride(logits_in);
  const int64_t N = logits.size(0), K = logits.size(1);
  const auto acc_dtype = loss_dtype(logits.scalar_type());
  at::Tensor rows = at::empty({N}, logits.options().dtype(acc_dtype));
  at::Tensor grad = compute_grad ? at::empty({N, K}, logits.options()) : at::Tensor();
  at::Tensor eps, w;
  if (epsilon_rows.has_value()) eps = epsilon_rows->to(acc_dtype).contiguous();
  if (weight.has_value()) w = weight->contiguous();
  // mean: sum of w_y over the counted rows for labels, N for a probability target.
  double denominator = 1.0;
  if (reduction == kMean) {
    denominator = target.is_floating_point() ? static_cast<double>(N) : label_denominator(target, w, ignore_index);
  }
  if (soft) {
    soft_rows_cpu({logits, target, w, eps, epsilon, mask, params, ignore_index, label_smoothing, denominator}, rows,
                  grad);
  } else {
    label_rows_cpu(logits, target, eps, w, epsilon, mask, params, ignore_index, denominator, rows, grad);
  }
  return {reduce_rows(rows, reduction, denominator), compute_grad ? grad : at::empty({0}, logits.options())};
}

void scale_grad_cpu(at::Tensor& grad, const at::Tensor& grad_output) {
  check_scale_inputs(grad, grad_output);
  if (grad_output.dim() == 0) {
    // Reading a CPU scalar is not a device sync; 1 (loss.backward()) leaves grad untouched.
    if (grad_output.item<double>() == 1.0) return;
    grad.mul_(grad_output);
    return;
  }
  grad.mul_(grad_output.unsqueeze(1));
}

}  // namespace
}  // namespace rk

TORCH_LIBRARY_IMPL(robustkernels, CPU, m) {
  m.impl("loss_forward", &rk::loss_forward_cpu);
  m.impl("soft_loss_forward", &rk::soft_loss_forward_cpu);
  m.impl("scale_grad_", &rk::scale_grad_cpu);
}
