#pragma once
// Forward-mode automatic differentiation with K tangents.
//
// The IoU-family backward evaluates the *same* templated geometry function as the forward on
// Dual numbers seeded with the box coordinates, so the gradient can never drift from the
// forward formula (one formula, two number types). Cost is ~(K+1)x the forward arithmetic,
// which is negligible next to the memory traffic of these ops.
#include <cmath>

#include "common/macros.h"

namespace fastdet {

template <typename T, int K>
struct Dual {
  T v;     // value
  T d[K];  // partial derivatives w.r.t. the K seeded inputs

  FASTDET_HD Dual() : v(0) {
    for (int k = 0; k < K; ++k) d[k] = 0;
  }
  FASTDET_HD Dual(T value) : v(value) {  // constants have zero tangent  NOLINT
    for (int k = 0; k < K; ++k) d[k] = 0;
  }
  // The input number `seed` of the K differentiated inputs.
  FASTDET_HD static Dual variable(T value, int seed) {
    Dual r(value);
    r.d[seed] = 1;
    return r;
  }
};

template <typename T, int K>
FASTDET_HD Dual<T, K> operator+(const Dual<T, K>& a, const Dual<T, K>& b) {
  Dual<T, K> r(a.v + b.v);
  for (int k = 0; k < K; ++k) r.d[k] = a.d[k] + b.d[k];
  return r;
}
template <typename T, int K>
FASTDET_HD Dual<T, K> operator-(const Dual<T, K>& a, const Dual<T, K>& b) {
  Dual<T, K> r(a.v - b.v);
  for (int k = 0; k < K; ++k) r.d[k] = a.d[k] - b.d[k];
  return r;
}
template <typename T, int K>
FASTDET_HD Dual<T, K> operator*(const Dual<T, K>& a, const Dual<T, K>& b) {
  Dual<T, K> r(a.v * b.v);
  for (int k = 0; k < K; ++k) r.d[k] = a.d[k] * b.v + a.v * b.d[k];
  return r;
}
template <typename T, int K>
FASTDET_HD Dual<T, K> operator/(const Dual<T, K>& a, const Dual<T, K>& b) {
  const T inv = T(1) / b.v;
  Dual<T, K> r(a.v * inv);
  for (int k = 0; k < K; ++k) r.d[k] = (a.d[k] - r.v * b.d[k]) * inv;
  return r;
}
template <typename T, int K>
FASTDET_HD Dual<T, K> operator+(const Dual<T, K>& a, T b) { return a + Dual<T, K>(b); }
template <typename T, int K>
FASTDET_HD Dual<T, K> operator-(T a, const Dual<T, K>& b) { return Dual<T, K>(a) - b; }
template <typename T, int K>
FASTDET_HD Dual<T, K> operator*(T a, const Dual<T, K>& b) { return Dual<T, K>(a) * b; }
template <typename T, int K>
FASTDET_HD Dual<T, K> operator*(const Dual<T, K>& a, T b) { return a * Dual<T, K>(b); }
template <typename T, int K>
FASTDET_HD bool operator>(const Dual<T, K>& a, const Dual<T, K>& b) { return a.v > b.v; }
template <typename T, int K>
FASTDET_HD bool operator<(const Dual<T, K>& a, const Dual<T, K>& b) { return a.v < b.v; }

// Value of a plain number or a dual number.
template <typename T>
FASTDET_HD T value_of(T x) { return x; }
template <typename T, int K>
FASTDET_HD T value_of(const Dual<T, K>& x) { return x.v; }

// atan for plain and dual numbers; d/dx atan(x) = 1 / (1 + x^2).
//
// float: branch-free range reduction to |x| <= tan(pi/8) and an odd degree-9 minimax polynomial
// (the reduction and coefficients of Moshier's Cephes atanf; max error ~1e-7 relative). Written
// with selects only, so the CPU loops vectorise (libm's atanf does not), and CPU and CUDA compute
// bit-identical angles.
FASTDET_HD float atan_of(float x) {
  const float ax = x < 0.0f ? -x : x;
  const bool big = ax > 2.414213562373095f;    // tan(3 pi / 8)
  const bool mid = !big && ax > 0.4142135623730950f;  // tan(pi / 8)
  const float r = big ? -1.0f / ax : (mid ? (ax - 1.0f) / (ax + 1.0f) : ax);
  const float offset = big ? 1.5707963267948966f : (mid ? 0.7853981633974483f : 0.0f);
  const float z = r * r;
  const float poly = (((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z - 3.33329491539e-1f) * z;
  const float y = offset + (poly * r + r);
  return x < 0.0f ? -y : y;
}
FASTDET_HD double atan_of(double x) { return atan(x); }
template <typename T, int K>
FASTDET_HD Dual<T, K> atan_of(const Dual<T, K>& x) {
  Dual<T, K> r(atan_of(x.v));
  const T s = T(1) / (T(1) + x.v * x.v);
  for (int k = 0; k < K; ++k) r.d[k] = x.d[k] * s;
  return r;
}

}  // namespace fastdet
