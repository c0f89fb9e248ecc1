#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace nb {
namespace {

TEST(Status, CarriesMessageAndContext) {
  Status s = format_error("tensor 'w': expected [4, 8], got [4, 7]");
  EXPECT_FALSE(s.is_ok());
  EXPECT_EQ(s.with_context("model.safetensors").to_string(),
            "format error: model.safetensors: tensor 'w': expected [4, 8], got [4, 7]");
  EXPECT_TRUE(Status::ok().is_ok());
}

Result<int> half(int x) {
  if (x % 2) return invalid_argument(strformat("%d is odd", x));
  return x / 2;
}
Status use_half(int x, int* out) {
  NB_ASSIGN_OR_RETURN(*out, half(x));
  return Status::ok();
}

TEST(Result, PropagatesErrors) {
  int v = 0;
  EXPECT_TRUE(use_half(8, &v).is_ok());
  EXPECT_EQ(v, 4);
  Status s = use_half(7, &v);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "7 is odd");
}

// Known encodings (IEEE 754 half, bfloat16).
TEST(DType, Fp16KnownValues) {
  EXPECT_EQ(float_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(float_to_fp16(5.960464477539063e-08f), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_fp16(2.98e-08f), 0x0000);  // below half of it
  EXPECT_EQ(float_to_fp16(1.0f + 1.0f / 2048), 0x3c00);  // tie -> even
  EXPECT_EQ(float_to_fp16(1.0f + 3.0f / 2048), 0x3c02);  // tie -> even (up)
  EXPECT_FLOAT_EQ(fp16_to_float(0x3555), 0.333251953125f);
  EXPECT_TRUE(std::isnan(fp16_to_float(0x7e00)));
}

TEST(DType, Fp16RoundTripsEveryValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = fp16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_fp16(f), h) << "h=" << h;
  }
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  uint32_t bits = 0x3f808000;  // exactly halfway between 0x3f80 and 0x3f81 -> even (0x3f80)
  float f;
  std::memcpy(&f, &bits, 4);
  EXPECT_EQ(float_to_bf16(f), 0x3f80);
  bits = 0x3f818000;  // halfway between 0x3f81 and 0x3f82 -> 0x3f82
  std::memcpy(&f, &bits, 4);
  EXPECT_EQ(float_to_bf16(f), 0x3f82);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float g = bf16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(g)) continue;
    ASSERT_EQ(float_to_bf16(g), h);
  }
}

TEST(DType, ParsesEverySafetensorsName) {
  for (const char* name : {"BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
                           "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
                           "F64", "I64", "U64"}) {
    DType t;
    ASSERT_TRUE(parse_dtype(name, &t)) << name;
    EXPECT_STREQ(dtype_name(t), name);
  }
  DType t;
  EXPECT_FALSE(parse_dtype("FP32", &t));
  EXPECT_EQ(dtype_bits(DType::kF4), 4);
  EXPECT_EQ(dtype_bits(DType::kC64), 64);
}

TEST(ThreadPool, CoversEveryIndexOnce) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(1001);
  pool.parallel_for(1001, 7, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
  });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  // Repeated use and nesting.
  std::atomic<int64_t> total{0};
  for (int rep = 0; rep < 50; ++rep) {
    pool.parallel_for(10, 1, [&](int64_t b, int64_t e) {
      pool.parallel_for(e - b, 1, [&](int64_t b2, int64_t e2) { total += e2 - b2; });
    });
  }
  EXPECT_EQ(total.load(), 500);
}

TEST(Tensor, ShapesAndOwnership) {
  HostTensor t(DType::kBF16, {3, 5});
  EXPECT_EQ(t.nbytes(), 30u);
  EXPECT_EQ(shape_to_string(t.shape()), "[3, 5]");
  HostTensor u = std::move(t);
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(u.view().dim(-1), 5);
}

}  // namespace
}  // namespace nb
