// Accuracy of rk::exp_avx2 (csrc/cpu/exp_avx2.h) against double-precision std::exp.
//   g++ -O2 -mavx2 -mfma -Icsrc benchmarks/exp_accuracy.cpp -o /tmp/exp_accuracy && /tmp/exp_accuracy
#include <cmath>
#include <cstdio>

#include "cpu/exp_avx2.h"

template <class F>
void measure(const char* name, F exp8, double lo, double hi) {
  double max_ulp = 0, worst = 0;
  long points = 0;
  for (double x = lo; x <= hi; x += 1e-4) {
    float in[8], out[8];
    for (int i = 0; i < 8; ++i) in[i] = static_cast<float>(std::fmin(x + i * 1.1e-5, hi));
    _mm256_storeu_ps(out, exp8(_mm256_loadu_ps(in)));
    for (int i = 0; i < 8; ++i, ++points) {
      const double exact = std::exp(static_cast<double>(in[i]));
      const float rounded = static_cast<float>(exact);
      const double ulp = static_cast<double>(std::nextafter(rounded, INFINITY)) - rounded;
      const double err = std::fabs(out[i] - exact) / ulp;
      if (err > max_ulp) max_ulp = err, worst = in[i];
    }
  }
  std::printf("%s: max error %.2f ulp at x = %g over %ld points of [%g, %g]\n", name, max_ulp, worst, points, lo, hi);
}

int main() {
  measure("exp_avx2", rk::exp_avx2, -87.0, 88.0);
  measure("exp_nonpositive_avx2", rk::exp_nonpositive_avx2, -87.0, 0.0);
  const float special[8] = {-INFINITY, INFINITY, NAN, -88.0f, -87.3f, 0.0f, -0.0f, 88.7f};
  float out[8], out_np[8];
  _mm256_storeu_ps(out, rk::exp_avx2(_mm256_loadu_ps(special)));
  _mm256_storeu_ps(out_np, rk::exp_nonpositive_avx2(_mm256_loadu_ps(special)));
  for (int i = 0; i < 8; ++i) std::printf("exp(%g) = %g   (nonpositive variant: %g)\n", special[i], out[i], out_np[i]);
  return 0;
}
