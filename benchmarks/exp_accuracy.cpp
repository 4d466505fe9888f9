// Accuracy of the AVX2 functions of csrc/cpu/exp_avx2.h against their double-precision
// std:: counterparts, in ulps of the correctly rounded float result.
//   g++ -O2 -mavx2 -mfma -Icsrc benchmarks/exp_accuracy.cpp -o /tmp/exp_accuracy && /tmp/exp_accuracy
#include <cmath>
#include <cstdio>

#include "cpu/exp_avx2.h"

// Max error over points spaced `step` apart in [lo, hi] (geometric spacing, ratio `step`, when
// `geometric`: for log over many binades).
template <class F, class R>
void measure(const char* name, F f8, R exact_of, double lo, double hi, double step, bool geometric = false) {
  double max_ulp = 0, worst = 0;
  long points = 0;
  for (double x = lo; x <= hi; x = geometric ? x * step : x + step) {
    float in[8], out[8];
    for (int i = 0; i < 8; ++i) {
      in[i] = static_cast<float>(std::fmin(geometric ? x * (1 + i * (step - 1) / 8) : x + i * step / 8, hi));
    }
    _mm256_storeu_ps(out, f8(_mm256_loadu_ps(in)));
    for (int i = 0; i < 8; ++i, ++points) {
      const double exact = exact_of(static_cast<double>(in[i]));
      const float rounded = static_cast<float>(exact);
      if (rounded == 0.0f) continue;  // exact zeros (log 1, expm1 0) are checked below
      const double ulp = std::fabs(static_cast<double>(std::nextafter(rounded, INFINITY)) - rounded);
      const double err = std::fabs(out[i] - exact) / ulp;
      if (err > max_ulp) max_ulp = err, worst = in[i];
    }
  }
  std::printf("%s: max error %.2f ulp at x = %g over %ld points of [%g, %g]\n", name, max_ulp, worst, points, lo, hi);
}

template <class F>
void specials(const char* name, F f8, const float (&in)[8]) {
  float out[8];
  _mm256_storeu_ps(out, f8(_mm256_loadu_ps(in)));
  std::printf("%s:", name);
  for (int i = 0; i < 8; ++i) std::printf("  (%g) = %g", in[i], out[i]);
  std::printf("\n");
}

int main() {
  auto exp = [](double x) { return std::exp(x); };
  auto log = [](double x) { return std::log(x); };
  auto log1p = [](double x) { return std::log1p(x); };
  auto expm1 = [](double x) { return std::expm1(x); };
  measure("exp_avx2", rk::exp_avx2, exp, -87.0, 88.0, 1e-4);
  measure("exp_nonpositive_avx2", rk::exp_nonpositive_avx2, exp, -87.0, 0.0, 1e-4);
  measure("expm1_avx2", rk::expm1_avx2, expm1, -20.0, 20.0, 1e-5);
  measure("exp_expm1_nonpositive_avx2 (exp)", [](__m256 x) { return rk::exp_expm1_nonpositive_avx2(x).exp; }, exp,
          -87.0, 0.0, 1e-4);
  measure("exp_expm1_nonpositive_avx2 (expm1)", [](__m256 x) { return rk::exp_expm1_nonpositive_avx2(x).expm1; },
          expm1, -20.0, 0.0, 1e-5);
  measure("log_avx2", rk::log_avx2, log, 1e-45, 3e38, 1.0 + 1e-5, true);
  measure("log1p_avx2", rk::log1p_avx2, log1p, -1.0 + 1e-7, 1.0, 1e-6);
  measure("log1p_avx2 (series)", rk::log1p_avx2, log1p, -1.0 / 16.0, 1.0 / 16.0, 1e-8);
  measure("reciprocal_one_plus_avx2", rk::reciprocal_one_plus_avx2, [](double x) { return 1.0 / (1.0 + x); },
          -1.0 + 1e-6, 1.0, 1e-6);
  measure("log1p_avx2 (large)", rk::log1p_avx2, log1p, 1.0, 3e38, 1.0 + 1e-5, true);
  specials("exp_avx2", rk::exp_avx2, {-INFINITY, INFINITY, NAN, -88.0f, -87.3f, 0.0f, -0.0f, 88.7f});
  specials("exp_nonpositive_avx2", rk::exp_nonpositive_avx2, {-INFINITY, -88.0f, -87.3f, -1e-30f, 0.0f, -0.0f, -1.0f, -50.0f});
  specials("log_avx2", rk::log_avx2, {0.0f, -0.0f, -1.0f, INFINITY, NAN, 1.0f, 1e-45f, 1.17549435e-38f});
  specials("log1p_avx2", rk::log1p_avx2, {-1.0f, -2.0f, 0.0f, -0.0f, INFINITY, NAN, 1e-30f, -1e-30f});
  specials("expm1_avx2", rk::expm1_avx2, {-INFINITY, INFINITY, NAN, 0.0f, -0.0f, 1e-30f, -90.0f, 89.0f});
  specials("exp_expm1_nonpositive_avx2 (expm1)", [](__m256 x) { return rk::exp_expm1_nonpositive_avx2(x).expm1; },
           {-INFINITY, -88.0f, -87.3f, -1e-30f, 0.0f, -0.0f, -1.0f, -1e-7f});
  return 0;
}
