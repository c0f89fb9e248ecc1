// Shared fixture of the CUDA op tests (see cuda_ops_test.cpp for the method and tolerances).
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "ops/device_buffer.h"
#ifdef NIBBLE_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace nb::cuda_test {

using ops::DeviceTensor;

constexpr double kTolElementwise = 5e-3;
constexpr double kTol = 1e-2;

inline uint64_t fresh_seed() {
  static const uint64_t s = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  return s;
}

inline double rel_err(const std::vector<float>& got, const std::vector<float>& ref) {
  EXPECT_EQ(got.size(), ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size() && i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;  // NaN never passes
    num += (static_cast<double>(got[i]) - ref[i]) * (static_cast<double>(got[i]) - ref[i]);
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef NIBBLE_HAVE_CUDA
    GTEST_SKIP() << "built without CUDA";
#else
    auto r = make_cuda_backend(0, DType::kBF16);
    if (!r.is_ok()) GTEST_SKIP() << "no GPU: " << r.status().message();
    gpu_ = std::move(*r);
    cpu_ = make_cpu_backend(true);
    rng_.seed(fresh_seed() + static_cast<uint64_t>(::testing::UnitTest::GetInstance()->random_seed()));
    RecordProperty("seed", std::to_string(fresh_seed()));
#endif
  }

  // n values uniform in [-scale, scale], never all zero, rounded to bf16.
  std::vector<float> rnd(size_t n, float scale = 1.f) {
    std::uniform_real_distribution<float> d(-scale, scale);
    std::vector<float> v(n);
    for (float& x : v) x = bf16_to_float(float_to_bf16(d(rng_)));
    return v;
  }
  // Host F32 -> device F32 -> cast to dtype on the device.
  DeviceTensor up(const std::vector<float>& v, Shape shape, DType dtype = DType::kBF16) {
    NB_CHECK(shape_numel(shape) == static_cast<int64_t>(v.size()), "shape");
    DeviceTensor f = ops::upload_tensor(*gpu_, TensorView{const_cast<float*>(v.data()), DType::kF32, shape, {}, Device::kCpu});
    if (dtype == DType::kF32) return f;
    DeviceTensor t = ops::make_device_tensor(*gpu_, dtype, shape);
    gpu_->cast(t.view(), f.view());
    return t;
  }
  DeviceTensor up_i32(const std::vector<int32_t>& v) {
    DeviceTensor t = ops::make_device_tensor(*gpu_, DType::kI32, {static_cast<int64_t>(v.size())});
    gpu_->upload(t.buffer.data(), v.data(), v.size() * 4);
    return t;
  }
  // Device tensor (any float dtype, possibly a row-strided view) -> host F32, cast on the device.
  std::vector<float> down(const TensorView& t) {
    Shape shape = t.shape;
    DeviceTensor f = ops::make_device_tensor(*gpu_, DType::kF32, shape);
    gpu_->cast(f.view(), t);
    std::vector<float> v(static_cast<size_t>(t.numel()));
    gpu_->download(v.data(), f.buffer.data(), v.size() * 4);
    return v;
  }
  static TensorView host(std::vector<float>& v, Shape shape) {
    return TensorView{v.data(), DType::kF32, std::move(shape), {}, Device::kCpu};
  }

  std::unique_ptr<ops::Backend> gpu_, cpu_;
  std::mt19937_64 rng_;
};

#define SEED_INFO " (seed " << fresh_seed() << ")"

}  // namespace nb::cuda_test
