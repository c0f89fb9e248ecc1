// Shared helpers of the op tests: seeded random inputs (fresh each run, NIBBLE_TEST_SEED to replay),
// NaN poisoning, normalised error, test-side rounding to bf16/fp16 written independently of core/.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "core/dtype.h"

namespace nb::opstest {

// One seed per process: random unless NIBBLE_TEST_SEED is set; printed in every failure via SeedTrace.
inline uint64_t base_seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("NIBBLE_TEST_SEED");
    if (env) return static_cast<uint64_t>(std::strtoull(env, nullptr, 10));
    return (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  }();
  return seed;
}

#define NB_SEED_TRACE() SCOPED_TRACE(::testing::Message() << "NIBBLE_TEST_SEED=" << ::nb::opstest::base_seed())

class Rng {
 public:
  explicit Rng(uint64_t salt) : gen_(base_seed() ^ (salt * 0x9E3779B97F4A7C15ull)) {}
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen_); }
  int randint(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen_); }  // inclusive
  // Values in [-1, 1] with magnitude at least 0.05, so no input is (near) zero.
  float nonzero() {
    const float v = uniform(0.05f, 1.f);
    return randint(0, 1) ? v : -v;
  }
  std::vector<float> vec(size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = nonzero();
    return v;
  }
  std::mt19937_64& gen() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

// ||a - b|| / ||b|| in double; infinity when either holds a NaN.
inline double rel_err(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}
inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  return rel_err(a.data(), b.data(), std::min(a.size(), b.size()));
}
inline double rel_err(const std::vector<float>& a, const std::vector<double>& b) {
  std::vector<float> bf(b.begin(), b.end());
  return rel_err(a, bf);
}

// ||a - b|| / ||scale||: for matrix products, scale = |x| @ |W|^T, so that cancellation inside one
// output cannot make a rounding difference look large (and a wrong term still shows at ~1/K).
inline double err_vs_magnitude(const std::vector<float>& a, const std::vector<float>& b, const std::vector<double>& scale) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += scale[i] * scale[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

inline void poison(std::vector<float>& v) { std::fill(v.begin(), v.end(), std::numeric_limits<float>::quiet_NaN()); }

// Round-to-nearest-even of a double to `bits` significant bits, with the subnormal floor 2^min_exp
// (bf16: 8 bits, floor 2^-133; fp16: 11 bits, floor 2^-24). Written here, not taken from core/.
inline double round_sig(double v, int bits, int min_exp) {
  if (v == 0 || !std::isfinite(v)) return v;
  int e;
  std::frexp(v, &e);  // v = f * 2^e, 0.5 <= |f| < 1
  const int q = std::max(e - bits, min_exp);  // quantum 2^q
  return std::nearbyint(std::ldexp(v, -q)) * std::ldexp(1.0, q);
}
inline double round_to(double v, DType t) {
  if (t == DType::kBF16) return round_sig(v, 8, -133);
  if (t == DType::kF16) return round_sig(v, 11, -24);
  if (t == DType::kF32) return static_cast<float>(v);
  return v;
}

// Encodes floats (already representable) into a raw buffer of dtype t (F32/BF16/F16).
inline std::vector<uint8_t> encode(const std::vector<float>& v, DType t) {
  std::vector<uint8_t> out(dtype_bytes(t, v.size()));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &v[i], 4);
    } else {
      const uint16_t h = t == DType::kBF16 ? float_to_bf16(v[i]) : float_to_fp16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}
// Random values exactly representable in dtype t (rounded with the test's own rounding).
inline std::vector<float> rand_in(Rng& rng, size_t n, DType t) {
  std::vector<float> v = rng.vec(n);
  for (auto& x : v) x = static_cast<float>(round_to(x, t));
  return v;
}

struct Backends {
  std::unique_ptr<ops::Backend> fast = make_cpu_backend(false);
  std::unique_ptr<ops::Backend> ref = make_cpu_backend(true);
};

inline TensorView view(std::vector<float>& v, Shape shape) { return TensorView{v.data(), DType::kF32, std::move(shape), {}, Device::kCpu}; }
inline TensorView view(std::vector<uint8_t>& v, DType t, Shape shape) {
  return TensorView{v.data(), t, std::move(shape), {}, Device::kCpu};
}
// Rows [rows, cols] inside a wider buffer with row stride ld.
inline TensorView strided(std::vector<float>& v, int64_t rows, int64_t cols, int64_t ld, int64_t offset = 0) {
  return TensorView{v.data() + offset, DType::kF32, {rows, cols}, {ld, 1}, Device::kCpu};
}

}  // namespace nb::opstest
