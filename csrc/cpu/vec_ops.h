// Ops<Vectorized<T>>: the elementwise operations of loss_math.h on ATen's SIMD vectors, so
// the CPU kernel evaluates the shared formulas a whole vector at a time (Sleef exp/log).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "loss_math.h"

namespace rk {

template <class T>
struct Ops<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  // Sleef's u10 exp, not exp_u20: exp_u20 clamps its input, which turns NaN into a finite
  // number and +inf into FLT_MAX; a NaN logit must poison its row.
  static V exp(const V& x) { return x.exp(); }
  static V log(const V& x) { return x.log(); }
  static V expm1(const V& x) { return x.expm1(); }
  static V log1p(const V& x) { return x.log1p(); }
  static V max(const V& a, const V& b) { return at::vec::maximum(a, b); }  // propagates NaN
  static V clamp_min(const V& x, const V& low) { return at::vec::clamp_min(x, low); }  // keeps NaN
  static V select_gt(const V& x, const V& threshold, const V& yes, const V& no) {
    return V::blendv(no, yes, x > threshold);
  }
};

}  // namespace rk
