// Round-to-nearest quantization: hand-computed cases (half-to-even, clamping, zero points), and
// properties over random weights. Bit-exactness against the compressed-tensors library itself is
// in ct_fixture_test.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "quant/quantizer.h"
#include "quant_test_util.h"

namespace nb::quant {
namespace {

HostTensor f32_tensor(int64_t out, int64_t in, const std::vector<float>& v) {
  HostTensor t(DType::kF32, {out, in});
  std::memcpy(t.data(), v.data(), v.size() * 4);
  return t;
}

TEST(Quantizer, SymmetricHandComputed) {
  // absmax 7.5 → s = 7.5 / 7.5 = 1; -7.5 rounds half to even (-8), 0.5 → 0, 2.5 → 2, 7.5 clamps to 7.
  HostTensor w = f32_tensor(1, 6, {-7.5f, 3.0f, 0.5f, 2.5f, 7.5f, -0.25f});
  auto q = quantize_rtn(w.view(), {4, QuantStrategy::kChannel, 0, true});
  ASSERT_TRUE(q.is_ok()) << q.status().to_string();
  EXPECT_EQ(q->scale(0, 0), 1.0f);
  const int expect[6] = {-8, 3, 0, 2, 7, 0};
  for (int c = 0; c < 6; ++c) EXPECT_EQ(q->code(0, c), expect[c]) << c;
  EXPECT_TRUE(q->zeros.empty());
}

TEST(Quantizer, AsymmetricHandComputed) {
  // Row 0: [0, 15] → s = 1, z = -8 - 0 = -8. Row 1: [-3, 12] → s = 1, z = -8 + 3 = -5.
  // Row 2: all positive [4, 19]: min is taken as 0 (0 must be representable) → s = 19/15.
  std::vector<float> v(3 * 16);
  for (int c = 0; c < 16; ++c) {
    v[c] = static_cast<float>(c);
    v[16 + c] = static_cast<float>(c - 3);
    v[32 + c] = static_cast<float>(c + 4);
  }
  HostTensor w = f32_tensor(3, 16, v);
  auto q = quantize_rtn(w.view(), {4, QuantStrategy::kGroup, 16, false});
  ASSERT_TRUE(q.is_ok()) << q.status().to_string();
  EXPECT_EQ(q->scale(0, 0), 1.0f);
  EXPECT_EQ(q->zero(0, 0), -8);
  EXPECT_EQ(q->scale(1, 0), 1.0f);
  EXPECT_EQ(q->zero(1, 0), -5);
  for (int c = 0; c < 16; ++c) {
    EXPECT_EQ(q->code(0, c), c - 8);
    EXPECT_EQ(q->code(1, c), c - 8);
  }
  EXPECT_EQ(q->scale(2, 0), 19.0f / 15.0f);
  EXPECT_EQ(q->zero(2, 0), -8);
  EXPECT_EQ(q->code(2, 15), 7);
}

TEST(Quantizer, AllZeroGroupGetsEpsScale) {
  HostTensor w(DType::kBF16, {2, 32});
  for (int c = 0; c < 32; ++c) w.as<uint16_t>()[32 + c] = float_to_bf16(0.5f);  // row 0 stays zero
  for (bool sym : {true, false}) {
    auto q = quantize_rtn(w.view(), {8, QuantStrategy::kGroup, 32, sym});
    ASSERT_TRUE(q.is_ok());
    EXPECT_EQ(q->scale(0, 0), 0.0078125f);  // torch.finfo(bfloat16).eps
    const std::vector<float> d = dequantize_float(*q);
    for (int c = 0; c < 32; ++c) EXPECT_EQ(d[c], 0.0f);
  }
}

TEST(Quantizer, RandomWeightsStayWithinHalfAStep) {
  NB_SEEDED_RNG(rng);
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32})
    for (int bits : {4, 8})
      for (bool sym : {true, false})
        for (auto [st, gs] : {std::pair{QuantStrategy::kGroup, int64_t{32}}, {QuantStrategy::kChannel, int64_t{0}},
                              {QuantStrategy::kTensor, int64_t{0}}}) {
          const int64_t out = 7, in = 96;
          HostTensor w(dt, {out, in});
          std::vector<float> ref(static_cast<size_t>(out * in));
          for (size_t i = 0; i < ref.size(); ++i) {
            float x = round_to_dtype(testing::rand_float(rng, -2.f, 2.f) * (1 + static_cast<float>(i % 5)), dt);
            ref[i] = x;
            if (dt == DType::kF32) w.as<float>()[i] = x;
            else w.as<uint16_t>()[i] = dt == DType::kBF16 ? float_to_bf16(x) : float_to_fp16(x);
          }
          auto q = quantize_rtn(w.view(), {bits, st, gs, sym});
          ASSERT_TRUE(q.is_ok()) << q.status().to_string();
          ASSERT_TRUE(q->validate().is_ok());
          EXPECT_EQ(q->scale_dtype(), dt);
          std::vector<float> d = dequantize_float(*q);
          for (int64_t o = 0; o < out; ++o)
            for (int64_t c = 0; c < in; ++c) {
              const int64_t g = q->group_of(c);
              const float s = q->scale(o, g);
              // Half a step, plus what the library's BF16/F16 arithmetic adds (half an ulp, relative 2^-8 /
              // 2^-11, each): rounding x / s and x / s + z, and the rounded scale spanning the range
              // (qmax - qmin)(1 + ulp) steps, which moves the extreme values by up to that much.
              const float ulp = dt == DType::kBF16 ? 0.00390625f : dt == DType::kF16 ? 0.00048828125f : 6e-8f;
              const float tol = s * (0.5f + ulp * (std::fabs(ref[o * in + c]) / s + 3.f * (q->qmax() + 1))) + 1e-7f;
              ASSERT_LE(std::fabs(d[o * in + c] - ref[o * in + c]), tol)
                  << dtype_name(dt) << " int" << bits << " sym " << sym << " " << strategy_name(st) << " at " << o
                  << "," << c;
            }
        }
}

TEST(Quantizer, RejectsBadInput) {
  HostTensor w(DType::kBF16, {4, 48});
  auto r = quantize_rtn(w.view(), {4, QuantStrategy::kGroup, 32, true});
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("in=48 is not a multiple of the group size 32"), std::string::npos);
  HostTensor i(DType::kI32, {4, 32});
  EXPECT_FALSE(quantize_rtn(i.view(), {4, QuantStrategy::kGroup, 32, true}).is_ok());
  EXPECT_FALSE(quantize_rtn(w.view(), {3, QuantStrategy::kChannel, 0, true}).is_ok());
  HostTensor v(DType::kBF16, {48});
  EXPECT_FALSE(quantize_rtn(v.view(), {4, QuantStrategy::kChannel, 0, true}).is_ok());
}

}  // namespace
}  // namespace nb::quant
