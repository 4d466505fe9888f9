// CUDA kernels of the soft-target rows (soft_math.h): a warp per row for rows of up to
// kMaxWarpRow classes (kWarpsPerBlock rows per block), a block of kBlockRowThreads per row beyond.
// Nothing is kept between passes: each pass re-reads the row's logits and target (from L1/L2)
// and recomputes exp(z_j - m), u_j and d_j, registers being scarcer than arithmetic. Instantiated
// once per logits dtype in soft_rows.cu.
#pragma once

#include "row_kernels.cuh"
#include "soft_math.h"

namespace rk {
namespace cuda_rows {

// How the target is stored.
enum SoftTargetKind : int {
  kLabelsInt64 = 0,
  kLabelsInt32 = 1,
  kProbFloat = 2,
  kProbDouble = 3,
  kProbHalf = 4,
  kProbBFloat16 = 5,
};

template <class T>
struct SoftArgs {
  const void* logits;
  int64_t N, K, row_stride;
  const void* target;
  int64_t target_stride, target_col_stride;  // the column stride of a probability target
  int target_kind;
  const T* weight;  // [K]; nullptr: none
  T keep, spread;   // 1 - alpha and alpha / K
  const T* eps_rows;
  int64_t eps_stride;
  T eps;
  T prm[kNumSlots];
  unsigned mask;
  int64_t ignore_index;
  const T* denominator;  // the mean's denominator (device scalar); nullptr: 1
  T* rows_out;
  void* grad;
};

template <class T>
__device__ __forceinline__ T load_probability(const SoftArgs<T>& args, int64_t offset) {
  switch (args.target_kind) {
    case kProbFloat:
      return static_cast<T>(static_cast<const float*>(args.target)[offset]);
    case kProbDouble:
      return static_cast<T>(static_cast<const double*>(args.target)[offset]);
    case kProbHalf:
      return static_cast<T>(static_cast<float>(static_cast<const c10::Half*>(args.target)[offset]));
    default:
      return static_cast<T>(static_cast<float>(static_cast<const c10::BFloat16*>(args.target)[offset]));
  }
}

// The Row of soft_math.h for kThreads threads per row (32: one warp; else a block).
template <class T, class scalar_t, int kThreads>
struct SoftGpuRow {
  const SoftArgs<T>& args;
  const scalar_t* z;
  int64_t t_base;  // offset of the row in a probability target
  int64_t label;   // -1 for a probability target
  int64_t K;
  int tid;
  T* shared;            // kThreads / 32 slots
  int64_t* shared_idx;  // kThreads / 32 slots
  scalar_t* grad;
  T max_value = T(0);
  int64_t special = 0;

  __device__ T z_at(int64_t j) const { return static_cast<T>(z[j]); }
  __device__ T w_at(int64_t j) const { return args.weight ? args.weight[j] : T(1); }
  __device__ T t_at(int64_t j) const { return load_probability(args, t_base + j * args.target_col_stride); }
  __device__ T u_at(int64_t j) const {
    if (label >= 0) return w_at(j) * args.spread + (j == label ? args.keep * w_at(label) : T(0));
    const T u = t_at(j) * args.keep + args.spread;
    return args.weight ? u * args.weight[j] : u;
  }

  // Every thread of the row ends with the same bits (a butterfly, then the per-warp partials in
  // one order), so the branches of soft_row stay uniform.
  __device__ T reduce_sum(T v) const {
    v = warp_sum(v);
    if constexpr (kThreads == kWarp) {
      return v;
    } else {
      if (tid % kWarp == 0) shared[tid / kWarp] = v;
      __syncthreads();
      T total = T(0);
      for (int w = 0; w < kThreads / kWarp; ++w) total += shared[w];
      __syncthreads();
      return total;
    }
  }
  __device__ T reduce_max(T v) const {
    v = warp_max(v);
    if constexpr (kThreads == kWarp) {
      return v;
    } else {
      if (tid % kWarp == 0) shared[tid / kWarp] = v;
      __syncthreads();
      T best = shared[0];
      for (int w = 1; w < kThreads / kWarp; ++w) best = nan_max(best, shared[w]);
      __syncthreads();
      return best;
    }
  }
  __device__ int64_t reduce_min_index(int64_t v) const {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
      const int64_t o = __shfl_xor_sync(kFullMask, v, offset);
      v = o < v ? o : v;
    }
    if constexpr (kThreads == kWarp) {
      return v;
    } else {
      if (tid % kWarp == 0) shared_idx[tid / kWarp] = v;
      __syncthreads();
      int64_t best = shared_idx[0];
      for (int w = 1; w < kThreads / kWarp; ++w) best = shared_idx[w] < best ? shared_idx[w] : best;
      __syncthreads();
      return best;
    }
  }

  // Nothing is kept between passes: target_sums forms sum_k u_k (z_k - m) in any case, and
  // others_u_e is a pass of its own.
  __device__ void find_special(T m, unsigned /*sums*/) {
    int64_t first = K;
    for (int64_t j = tid; j < K; j += kThreads) {
      if (z_at(j) - m == T(0) && j < first) first = j;
    }
    special = reduce_min_index(first);
  }
  __device__ TargetSums<T> target_sums(T m) const {
    T u_others = T(0), u_zm = T(0), bad = T(0);
    for (int64_t j = tid; j < K; j += kThreads) {
      const T u = u_at(j);
      u_zm += Ops<T>::select_nonzero(u, u * (z_at(j) - m));
      if (j != special) u_others += u;
      if (label < 0 && !(t_at(j) >= T(0))) bad = T(1);
    }
    TargetSums<T> out;
    out.u_star = u_at(special);
    out.u_others = reduce_sum(u_others);
    out.u_zm = reduce_sum(u_zm);
    out.bad = reduce_sum(bad) > T(0);
    return out;
  }
  __device__ T remember_exp(T m) const {
    T s = T(0);
    for (int64_t j = tid; j < K; j += kThreads) {
      if (j != special) s += Ops<T>::exp_shifted(z_at(j) - m);
    }
    return reduce_sum(s);
  }
  __device__ T others_u_e() const {
    T s = T(0);
    for (int64_t j = tid; j < K; j += kThreads) {
      if (j != special) s += u_at(j) * Ops<T>::exp_shifted(z_at(j) - max_value);
    }
    return reduce_sum(s);
  }
  template <class F>
  __device__ T sum_of(const F& f) const {
    T s = T(0);
    for (int64_t j = tid; j < K; j += kThreads) s += f(z_at(j));
    return reduce_sum(s);
  }
  template <class F>
  __device__ ClassSums<T> class_sums(const F& f) const {
    const T m = max_value;
    ClassSums<T> out;
    for (int64_t j = tid; j < K; j += kThreads) {
      if (j == special) continue;
      const T zm = z_at(j) - m;
      const ClassTerms<T> c = f(zm, Ops<T>::exp_shifted(zm), u_at(j));
      out.loss += c.loss;
      out.p += c.d + c.p_minus_d;
      out.b += c.b;
    }
    out.loss = reduce_sum(out.loss);
    out.p = reduce_sum(out.p);
    out.b = reduce_sum(out.b);
    return out;
  }
  template <class DOf, class G>
  __device__ void write_soft_grad(const DOf& d_of, const G& g, T special_value) const {
    const T m = max_value;
    for (int64_t j = tid; j < K; j += kThreads) {
      T v = special_value;
      if (j != special) {
        const T zm = z_at(j) - m;
        const T e = Ops<T>::exp_shifted(zm);
        v = g(e, d_of(zm, e, u_at(j)));
      }
      grad[j] = static_cast<scalar_t>(v);
    }
  }
  template <class F>
  __device__ void write_grad(const F& f, T special_value) const {
    for (int64_t j = tid; j < K; j += kThreads) grad[j] = static_cast<scalar_t>(j == special ? special_value : f(z_at(j)));
  }
};

template <class scalar_t, int kThreads>
__global__ void __launch_bounds__(kThreads == kWarp ? kWarp * kWarpsPerBlock : kThreads)
    soft_row_kernel(const SoftArgs<at::opmath_type<scalar_t>> args) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kRowsPerBlock = kThreads == kWarp ? kWarpsPerBlock : 1;
  __shared__ T shared[kThreads / kWarp];
  __shared__ int64_t shared_idx[kThreads / kWarp];
  const int tid = threadIdx.x % kThreads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kThreads;
  if (row >= args.N) return;  // whole rows leave together
  const int64_t K = args.K;
  scalar_t* grad = args.grad ? static_cast<scalar_t*>(args.grad) + row * K : nullptr;
  int64_t label = -1;
  if (args.target_kind == kLabelsInt64 || args.target_kind == kLabelsInt32) {
    const int64_t offset = row * args.target_stride;
    label = args.target_kind == kLabelsInt32 ? static_cast<int64_t>(static_cast<const int32_t*>(args.target)[offset])
                                              : static_cast<const int64_t*>(args.target)[offset];
    if (label == args.ignore_index || label < 0 || label >= K) {
      // Ignored: 0 and 0. Invalid label: NaN loss and NaN gradient; the row is never read.
      const T fill = label == args.ignore_index ? T(0) : std::numeric_limits<T>::quiet_NaN();
      if (grad) {
        for (int64_t j = tid; j < K; j += kThreads) grad[j] = static_cast<scalar_t>(fill);
      }
      if (tid == 0) args.rows_out[row] = fill;
      return;
    }
  }
  const scalar_t* z = static_cast<const scalar_t*>(args.logits) + row * args.row_stride;
  SoftGpuRow<T, scalar_t, kThreads> r{args, z, row * args.target_stride, label, K, tid, shared, shared_idx, grad};
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t j = tid; j < K; j += kThreads) m = nan_max(m, r.z_at(j));
  r.max_value = r.reduce_max(m);
  const T eps = args.eps_rows ? args.eps_rows[row * args.eps_stride] : args.eps;
  const T scale = args.denominator ? T(1) / *args.denominator : T(1);
  const T loss = soft_row<T>(r, args.mask, args.prm, eps, grad != nullptr, scale);
  if (tid == 0) args.rows_out[row] = loss;
}

template <class scalar_t>
void launch_soft(const SoftArgs<at::opmath_type<scalar_t>>& args, cudaStream_t stream) {
  const int64_t grid = args.K > kMaxWarpRow ? args.N : (args.N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(grid <= std::numeric_limits<int32_t>::max(), "robustkernels: logits has too many rows (", args.N,
              ") for one launch; split the batch");
  if (args.K > kMaxWarpRow) {
    soft_row_kernel<scalar_t, kBlockRowThreads><<<static_cast<unsigned>(grid), kBlockRowThreads, 0, stream>>>(args);
  } else {
    soft_row_kernel<scalar_t, kWarp><<<static_cast<unsigned>(grid), kWarp * kWarpsPerBlock, 0, stream>>>(args);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda_rows
}  // namespace rk

// `RK_SOFT_KERNELS(, float)` instantiates the soft-row launcher of a logits dtype,
// `RK_SOFT_KERNELS(extern, float)` declares that another translation unit does.
#define RK_SOFT_KERNELS(PREFIX, scalar_t)                     \
  PREFIX template void rk::cuda_rows::launch_soft<scalar_t>( \
      const rk::cuda_rows::SoftArgs<at::opmath_type<scalar_t>>&, cudaStream_t);
