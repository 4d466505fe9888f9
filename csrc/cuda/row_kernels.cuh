// CUDA kernels. Rows of up to 1024 classes: one warp per row, the row held in registers for
// every pass of the shared row math (loss_math.h), lanes combined with shuffles, 128-bit loads
// and stores when the row is aligned. Wider rows: one block per row, re-reading the row (from
// L1/L2) in each pass. Launched on the current stream; the mean's count of non-ignored rows
// stays on the device (no host sync anywhere).
//
// The kernels live in this header and are instantiated in one translation unit per logits dtype
// (rows_float.cu, rows_double.cu, rows_half.cu, rows_bfloat16.cu), which the build compiles in
// parallel. Measured with nvcc 13.0 for sm_90 on this project's 2-core machine: the single file
// they came from took 190 s; now each rows_<dtype>.cu takes about 40 s and loss_cuda.cu 66 s.
#pragma once

// Deliberately not ATen/ATen.h: every rows_<dtype>.cu parses these headers in nvcc's host and
// device passes, and with ATen.h rows_float.cu took 72 s instead of 38 s (measured).
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "loss_math.h"

namespace rk {
namespace cuda_rows {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpsPerBlock = 4;      // warp-per-row kernel: 128 threads, 4 rows per block
constexpr int kBlockRowThreads = 256;  // block-per-row kernel
constexpr int64_t kMaxWarpRow = 1024;  // 32 lanes x 32 registers

template <class T>
__device__ __forceinline__ T nan_max(T a, T b) {
  return (a != a) ? a : ((b != b) ? b : (a > b ? a : b));
}

// Butterfly reductions: every lane ends with the same bits (x + y == y + x at each level), so
// the data-dependent loops of the row math (bisection) take the same path on every lane.
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <class T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v = nan_max(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

template <class T>
struct KernelArgs {
  const void* logits;
  int64_t N, K, row_stride;
  const void* target;
  int64_t target_stride;
  bool target_is_int32;
  const T* eps_rows;  // nullptr: scalar eps
  int64_t eps_stride;
  T eps;
  T prm[kNumSlots];  // load_slots
  unsigned mask;     // the primitives of the loss
  int64_t ignore_index;
  const int64_t* count;  // rows counted by the mean (device scalar); nullptr: no scaling
  const T* denominator;  // the mean's weighted denominator (device scalar), used instead of count
  const T* weight;       // [K] class weights scaling row i by w_{y_i}; nullptr: none
  T* rows_out;
  void* grad;  // nullptr without gradient
};

template <class T>
__device__ __forceinline__ int64_t load_label(const KernelArgs<T>& args, int64_t row) {
  const int64_t offset = row * args.target_stride;
  return args.target_is_int32 ? static_cast<int64_t>(static_cast<const int32_t*>(args.target)[offset])
                              : static_cast<const int64_t*>(args.target)[offset];
}

template <class T>
__device__ __forceinline__ T row_eps(const KernelArgs<T>& args, int64_t row) {
  return args.eps_rows ? args.eps_rows[row * args.eps_stride] : args.eps;
}

template <class T>
__device__ __forceinline__ T grad_scale(const KernelArgs<T>& args) {
  if (args.denominator) return T(1) / *args.denominator;
  return args.count ? T(1) / static_cast<T>(*args.count) : T(1);
}

template <class T>
__device__ __forceinline__ T row_weight(const KernelArgs<T>& args, int64_t label) {
  return args.weight ? args.weight[label] : T(1);
}

template <class S, int N>
struct alignas(sizeof(S) * N) Pack {
  S val[N];
};

// ---- one warp per row ---------------------------------------------------------------------------

// Lane `lane` holds columns (i / VEC) * 32 * VEC + lane * VEC + i % VEC: VEC consecutive values
// (16 bytes) per load, consecutive lanes on consecutive 16-byte chunks.
// The *_remembered passes of the Row interface for a Row that remembers nothing: registers are
// scarcer than arithmetic here, so f is recomputed in each pass (CRTP over the Row's own passes).
template <class Row, class T>
struct RecomputingRow {
  template <class F>
  __device__ void remember(const F&) const {}
  template <class F, class G>
  __device__ T sum_remembered(const F& f, const G& g) const {
    return row().sum_of([&f, &g](T a) { return g(f(a)); });
  }
  template <class F, class G>
  __device__ T sum_others_remembered(const F& f, const G& g) const {
    return row().sum_others([&f, &g](T a) { return g(f(a)); });
  }
  template <class F, class G>
  __device__ void write_grad_remembered(const F& f, const G& g, T label_value) const {
    row().write_grad([&f, &g](T a) { return g(f(a)); }, label_value);
  }

 private:
  __device__ const Row& row() const { return static_cast<const Row&>(*this); }
};

template <class T, class scalar_t, int ELEMS>
struct WarpRow : RecomputingRow<WarpRow<T, scalar_t, ELEMS>, T> {
  static constexpr int VEC = 16 / sizeof(scalar_t) < ELEMS ? 16 / sizeof(scalar_t) : ELEMS;
  static_assert(ELEMS % VEC == 0, "ELEMS must be a multiple of the vector width");
  T v[ELEMS];
  int lane;
  int64_t K, y;
  scalar_t* grad;
  bool vec_store;

  __device__ __forceinline__ int64_t col(int i) const {
    return static_cast<int64_t>(i / VEC) * (kWarp * VEC) + lane * VEC + (i % VEC);
  }

  __device__ void load(const scalar_t* z, T eps) {
    const bool vec_load = reinterpret_cast<uintptr_t>(z) % 16 == 0 && K % VEC == 0;
#pragma unroll
    for (int c = 0; c < ELEMS / VEC; ++c) {
      const int64_t base = col(c * VEC);
      if (vec_load) {
        if (base < K) {
          const Pack<scalar_t, VEC> p = *reinterpret_cast<const Pack<scalar_t, VEC>*>(z + base);
#pragma unroll
          for (int w = 0; w < VEC; ++w) v[c * VEC + w] = static_cast<T>(p.val[w]);
        }
      } else {
#pragma unroll
        for (int w = 0; w < VEC; ++w) v[c * VEC + w] = base + w < K ? static_cast<T>(z[base + w]) : T(0);
      }
    }
#pragma unroll
    for (int i = 0; i < ELEMS; ++i) {
      if (col(i) == y) v[i] += eps;
    }
  }

  template <class F>
  __device__ T sum_of(const F& f) const {
    T s = T(0);
#pragma unroll
    for (int i = 0; i < ELEMS; ++i) {
      if (col(i) < K) s += f(v[i]);
    }
    return warp_sum(s);
  }
  template <class F>
  __device__ T sum_others(const F& f) const {
    T s = T(0);
#pragma unroll
    for (int i = 0; i < ELEMS; ++i) {
      if (col(i) < K && col(i) != y) s += f(v[i]);
    }
    return warp_sum(s);
  }
  template <class F>
  __device__ T max_of(const F& f) const {
    T m = -std::numeric_limits<T>::infinity();
#pragma unroll
    for (int i = 0; i < ELEMS; ++i) {
      if (col(i) < K) m = nan_max(m, f(v[i]));
    }
    return warp_max(m);
  }
  template <class F>
  __device__ void write_grad(const F& f, T label_value) const {
#pragma unroll
    for (int c = 0; c < ELEMS / VEC; ++c) {
      const int64_t base = col(c * VEC);
      if (base >= K) continue;
      Pack<scalar_t, VEC> out;
#pragma unroll
      for (int w = 0; w < VEC; ++w) {
        const int64_t j = base + w;
        out.val[w] = static_cast<scalar_t>(j == y ? label_value : (j < K ? f(v[c * VEC + w]) : T(0)));
      }
      if (vec_store) {
        *reinterpret_cast<Pack<scalar_t, VEC>*>(grad + base) = out;
      } else {
#pragma unroll
        for (int w = 0; w < VEC; ++w) {
          if (base + w < K) grad[base + w] = out.val[w];
        }
      }
    }
  }
};

template <class scalar_t, int ELEMS, unsigned VARIANT>
__global__ void __launch_bounds__(kWarp* kWarpsPerBlock)
    warp_row_kernel(const KernelArgs<at::opmath_type<scalar_t>> args) {
  using T = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= args.N) return;  // whole warps leave together
  const int64_t K = args.K;
  const int64_t label = load_label(args, row);
  scalar_t* grad = args.grad ? static_cast<scalar_t*>(args.grad) + row * K : nullptr;
  if (label == args.ignore_index || label < 0 || label >= K) {
    // Ignored: 0 and 0. Invalid label: NaN loss and NaN gradient; the row is never read.
    const T fill = label == args.ignore_index ? T(0) : std::numeric_limits<T>::quiet_NaN();
    if (grad) {
      for (int64_t j = lane; j < K; j += kWarp) grad[j] = static_cast<scalar_t>(fill);
    }
    if (lane == 0) args.rows_out[row] = fill;
    return;
  }
  const scalar_t* z = static_cast<const scalar_t*>(args.logits) + row * args.row_stride;
  const T eps = row_eps(args, row);
  WarpRow<T, scalar_t, ELEMS> r;
  r.lane = lane;
  r.K = K;
  r.y = label;
  r.grad = grad;
  r.vec_store = K % WarpRow<T, scalar_t, ELEMS>::VEC == 0;  // fresh buffer: rows 16-byte aligned then
  r.load(z, eps);
  const T a_y = static_cast<T>(z[label]) + eps;  // the same value the owning lane holds
  const T w = row_weight(args, label);
  const T loss = row_forward<T, VARIANT>(r, args.mask, args.prm, a_y, grad != nullptr, grad_scale(args) * w);
  if (lane == 0) args.rows_out[row] = w * loss;
}

// ---- one block per row ---------------------------------------------------------------------------

template <class T, class scalar_t>
struct BlockRow : RecomputingRow<BlockRow<T, scalar_t>, T> {
  const scalar_t* z;
  int64_t K, y;
  T eps;
  scalar_t* grad;
  T* shared;  // one slot per warp

  __device__ __forceinline__ T at(int64_t j) const {
    const T a = static_cast<T>(z[j]);
    return j == y ? a + eps : a;
  }
  // Every thread sums the per-warp partials in the same order: identical results.
  __device__ T block_sum(T v) const {
    v = warp_sum(v);
    if (threadIdx.x % kWarp == 0) shared[threadIdx.x / kWarp] = v;
    __syncthreads();
    T total = T(0);
    for (int w = 0; w < kBlockRowThreads / kWarp; ++w) total += shared[w];
    __syncthreads();  // the slots are reused by the next reduction
    return total;
  }
  __device__ T block_max(T v) const {
    v = warp_max(v);
    if (threadIdx.x % kWarp == 0) shared[threadIdx.x / kWarp] = v;
    __syncthreads();
    T best = shared[0];
    for (int w = 1; w < kBlockRowThreads / kWarp; ++w) best = nan_max(best, shared[w]);
    __syncthreads();
    return best;
  }
  template <class F>
  __device__ T sum_of(const F& f) const {
    T s = T(0);
    for (int64_t j = threadIdx.x; j < K; j += kBlockRowThreads) s += f(at(j));
    return block_sum(s);
  }
  template <class F>
  __device__ T sum_others(const F& f) const {
    T s = T(0);
    for (int64_t j = threadIdx.x; j < K; j += kBlockRowThreads) {
      if (j != y) s += f(at(j));
    }
    return block_sum(s);
  }
  template <class F>
  __device__ T max_of(const F& f) const {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t j = threadIdx.x; j < K; j += kBlockRowThreads) m = nan_max(m, f(at(j)));
    return block_max(m);
  }
  template <class F>
  __device__ void write_grad(const F& f, T label_value) const {
    for (int64_t j = threadIdx.x; j < K; j += kBlockRowThreads) {
      grad[j] = static_cast<scalar_t>(j == y ? label_value : f(at(j)));
    }
  }
};

template <class scalar_t, unsigned VARIANT>
__global__ void __launch_bounds__(kBlockRowThreads) block_row_kernel(const KernelArgs<at::opmath_type<scalar_t>> args) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T shared[kBlockRowThreads / kWarp];
  const int64_t row = blockIdx.x;
  const int64_t K = args.K;
  const int64_t label = load_label(args, row);
  scalar_t* grad = args.grad ? static_cast<scalar_t*>(args.grad) + row * K : nullptr;
  if (label == args.ignore_index || label < 0 || label >= K) {
    const T fill = label == args.ignore_index ? T(0) : std::numeric_limits<T>::quiet_NaN();
    if (grad) {
      for (int64_t j = threadIdx.x; j < K; j += kBlockRowThreads) grad[j] = static_cast<scalar_t>(fill);
    }
    if (threadIdx.x == 0) args.rows_out[row] = fill;
    return;
  }
  const scalar_t* z = static_cast<const scalar_t*>(args.logits) + row * args.row_stride;
  const T eps = row_eps(args, row);
  BlockRow<T, scalar_t> r{{}, z, K, label, eps, grad, shared};
  const T w = row_weight(args, label);
  const T loss = row_forward<T, VARIANT>(r, args.mask, args.prm, r.at(label), grad != nullptr, grad_scale(args) * w);
  if (threadIdx.x == 0) args.rows_out[row] = w * loss;
}

// ---- launch --------------------------------------------------------------------------------------

// Instantiated once per dtype in rows_<dtype>.cu (RK_ROW_KERNELS below), declared extern elsewhere.
template <class scalar_t, unsigned VARIANT>
void launch_variant(const KernelArgs<at::opmath_type<scalar_t>>& args, cudaStream_t stream) {
  const int64_t K = args.K;
  // One block per row (K > 1024) or per kWarpsPerBlock rows: grid.x is limited to 2^31 - 1, and a
  // silent truncation of the cast below would leave rows unwritten.
  const int64_t grid = K > kMaxWarpRow ? args.N : (args.N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(grid <= std::numeric_limits<int32_t>::max(), "robustkernels: logits has too many rows (", args.N,
              ") for one launch; split the batch");
  if (K > kMaxWarpRow) {
    block_row_kernel<scalar_t, VARIANT><<<static_cast<unsigned>(args.N), kBlockRowThreads, 0, stream>>>(args);
  } else {
    const unsigned blocks = static_cast<unsigned>((args.N + kWarpsPerBlock - 1) / kWarpsPerBlock);
    const int threads = kWarp * kWarpsPerBlock;
    if (K <= 256) {
      warp_row_kernel<scalar_t, 8, VARIANT><<<blocks, threads, 0, stream>>>(args);
    } else if (K <= 512) {
      warp_row_kernel<scalar_t, 16, VARIANT><<<blocks, threads, 0, stream>>>(args);
    } else {
      warp_row_kernel<scalar_t, 32, VARIANT><<<blocks, threads, 0, stream>>>(args);
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda_rows
}  // namespace rk

// The launchers of one logits dtype, one per kernel variant (loss_math.h's row_variant):
// `RK_ROW_KERNELS(, float)` instantiates them, `RK_ROW_KERNELS(extern, float)` declares that
// another translation unit does.
#define RK_ROW_KERNEL_VARIANT(VARIANT, PREFIX, scalar_t)              \
  PREFIX template void rk::cuda_rows::launch_variant<scalar_t, VARIANT>( \
      const rk::cuda_rows::KernelArgs<at::opmath_type<scalar_t>>&, cudaStream_t);
#define RK_ROW_KERNELS(PREFIX, scalar_t) RK_FOR_EACH_VARIANT(RK_ROW_KERNEL_VARIANT, PREFIX, scalar_t)
