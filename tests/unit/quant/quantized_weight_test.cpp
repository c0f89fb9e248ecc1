// The canonical layout: code access, dequantization (rounded once, bit-exact), slicing along out
// and in (slice then dequantize == dequantize then slice).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "quant/quantized_weight.h"
#include "quant_test_util.h"

namespace nb::quant {
namespace {

using testing::rand_float;
using testing::rand_int;

// A random weight: codes and zeros over the full range, scales of `dtype`, optional act-order g_idx.
QuantizedWeight random_weight(std::mt19937_64& rng, int64_t out, int64_t in, int bits, QuantStrategy st, int64_t gs,
                              bool sym, bool act_order, DType dtype) {
  QuantizedWeight w = make_quantized_weight(out, in, bits, st, gs, sym, dtype);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t c = 0; c < in; ++c) w.set_code(o, c, rand_int(rng, w.qmin(), w.qmax()));
  for (int64_t i = 0; i < out * w.num_groups; ++i) {
    float s = rand_float(rng, 0.001f, 0.1f);
    if (dtype == DType::kF32) w.scales.as<float>()[i] = s;
    else w.scales.as<uint16_t>()[i] = dtype == DType::kBF16 ? float_to_bf16(s) : float_to_fp16(s);
    if (!sym) w.zeros[static_cast<size_t>(i)] = static_cast<int8_t>(rand_int(rng, w.qmin(), w.qmax()));
  }
  if (act_order) {  // each group keeps gs members, scattered
    w.g_idx.resize(static_cast<size_t>(in));
    for (int64_t c = 0; c < in; ++c) w.g_idx[c] = static_cast<int32_t>(c / w.group_size);
    std::shuffle(w.g_idx.begin(), w.g_idx.end(), rng);
  }
  EXPECT_TRUE(w.validate().is_ok()) << w.validate().to_string();
  return w;
}

// The formula of formats.md §2.9, written out here: (q - z) * s with the group of column c.
float reference_value(const QuantizedWeight& w, int64_t o, int64_t c) {
  int64_t g = w.g_idx.empty() ? c / w.group_size : w.g_idx[c];
  float s = load_as_float(w.scales.data(), w.scales.dtype(), static_cast<size_t>(o * w.num_groups + g));
  int z = w.zeros.empty() ? 0 : w.zeros[o * w.num_groups + g];
  return static_cast<float>(w.code(o, c) - z) * s;
}

TEST(QuantizedWeight, CodesRoundTripThroughNibbles) {
  NB_SEEDED_RNG(rng);
  for (int bits : {4, 8})
    for (int64_t in : {1, 7, 10, 37}) {
      QuantizedWeight w = make_quantized_weight(3, in, bits, QuantStrategy::kChannel, 0, true, DType::kBF16);
      std::vector<int> q(static_cast<size_t>(3 * in));
      for (auto& v : q) v = rand_int(rng, w.qmin(), w.qmax());
      for (int64_t o = 0; o < 3; ++o)
        for (int64_t c = 0; c < in; ++c) w.set_code(o, c, q[o * in + c]);
      for (int64_t o = 0; o < 3; ++o)
        for (int64_t c = 0; c < in; ++c) ASSERT_EQ(w.code(o, c), q[o * in + c]);
      EXPECT_EQ(w.codes.size(), static_cast<size_t>(3 * (bits == 4 ? (in + 1) / 2 : in)));
      if (bits == 4 && in % 2 == 1) {  // the unused high nibble of each row stays 0
        for (int64_t o = 0; o < 3; ++o) EXPECT_EQ(w.codes[o * ((in + 1) / 2) + in / 2] >> 4, 0);
      }
    }
}

TEST(QuantizedWeight, DequantizeRoundsOnceToTheRequestedDtype) {
  NB_SEEDED_RNG(rng);
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32}) {
    QuantizedWeight w = random_weight(rng, 5, 64, 4, QuantStrategy::kGroup, 32, false, false, dt);
    HostTensor d = dequantize(w, dt);
    std::vector<float> f = dequantize_float(w);
    for (int64_t o = 0; o < 5; ++o)
      for (int64_t c = 0; c < 64; ++c) {
        const float ref = reference_value(w, o, c);
        ASSERT_EQ(f[o * 64 + c], ref);
        ASSERT_EQ(load_as_float(d.data(), dt, static_cast<size_t>(o * 64 + c)), round_to_dtype(ref, dt));
      }
  }
}

void expect_same_dequant(const QuantizedWeight& sliced, const std::vector<float>& full, int64_t full_in, int64_t r0,
                         int64_t c0) {
  std::vector<float> part = dequantize_float(sliced);
  for (int64_t o = 0; o < sliced.out; ++o)
    for (int64_t c = 0; c < sliced.in; ++c)
      ASSERT_EQ(part[o * sliced.in + c], full[(r0 + o) * full_in + c0 + c]) << "row " << o << " col " << c;
}

TEST(QuantizedWeight, SlicingCommutesWithDequantization) {
  NB_SEEDED_RNG(rng);
  struct Case {
    int64_t out, in, gs;
    QuantStrategy st;
  };
  const Case cases[] = {{7, 96, 32, QuantStrategy::kGroup},   {13, 128, 64, QuantStrategy::kGroup},
                        {13, 37, 0, QuantStrategy::kChannel}, {7, 10, 0, QuantStrategy::kTensor},
                        {8, 136, 8, QuantStrategy::kGroup}};
  for (const Case& k : cases)
    for (int bits : {4, 8})
      for (bool sym : {true, false})
        for (bool act : {false, true}) {
          if (act && k.st != QuantStrategy::kGroup) continue;
          SCOPED_TRACE(::testing::Message() << k.out << "x" << k.in << " gs " << k.gs << " int" << bits << " sym " << sym
                                           << " act " << act);
          QuantizedWeight w = random_weight(rng, k.out, k.in, bits, k.st, k.gs, sym, act, DType::kBF16);
          if (k.st == QuantStrategy::kTensor)  // one scale for all rows
            for (int64_t o = 1; o < k.out; ++o) w.scales.as<uint16_t>()[o] = w.scales.as<uint16_t>()[0];
          const std::vector<float> full = dequantize_float(w);
          auto rows = slice_out(w, 2, k.out - 3);
          ASSERT_TRUE(rows.is_ok()) << rows.status().to_string();
          expect_same_dequant(*rows, full, k.in, 2, 0);
          // Columns: a group-aligned piece (odd start for channel/tensor/act-order) and the tail.
          const int64_t step = (k.st == QuantStrategy::kGroup && !act) ? k.gs : 3;
          auto cols = slice_in(w, step, k.in - step);
          ASSERT_TRUE(cols.is_ok()) << cols.status().to_string();
          EXPECT_TRUE(cols->validate().is_ok()) << cols->validate().to_string();
          expect_same_dequant(*cols, full, k.in, 0, step);
          auto both = slice_in(*rows, 0, step);
          ASSERT_TRUE(both.is_ok());
          expect_same_dequant(*both, full, k.in, 2, 0);
        }
}

TEST(QuantizedWeight, SlicingRejectsBadRanges) {
  NB_SEEDED_RNG(rng);
  QuantizedWeight w = random_weight(rng, 8, 96, 4, QuantStrategy::kGroup, 32, true, false, DType::kBF16);
  EXPECT_FALSE(slice_out(w, 4, 5).is_ok());
  EXPECT_FALSE(slice_out(w, -1, 2).is_ok());
  EXPECT_FALSE(slice_in(w, 0, 97).is_ok());
  Result<QuantizedWeight> mid = slice_in(w, 16, 32);
  ASSERT_FALSE(mid.is_ok());
  EXPECT_NE(mid.status().message().find("group boundaries"), std::string::npos) << mid.status().to_string();
  EXPECT_FALSE(slice_in(w, 32, 40).is_ok());  // ends inside a group
  EXPECT_TRUE(slice_in(w, 64, 32).is_ok());
}

TEST(QuantizedWeight, DescribeAndValidate) {
  QuantizedWeight w = make_quantized_weight(4, 64, 4, QuantStrategy::kGroup, 32, false, DType::kF16);
  EXPECT_EQ(w.describe(), "int4 group 32 asym");
  EXPECT_TRUE(w.validate().is_ok());
  w.zeros.pop_back();
  EXPECT_FALSE(w.validate().is_ok());
}

}  // namespace
}  // namespace nb::quant
