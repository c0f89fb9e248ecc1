// Bit packing: every vector of formats.md §8 and random round trips of pack → unpack.
#include <gtest/gtest.h>

#include "quant/compressed_tensors.h"
#include "quant/pack.h"
#include "quant/quantized_weight.h"
#include "quant_test_util.h"

namespace nb::quant {
namespace {

using testing::rand_int;

std::vector<uint32_t> words_of(const NamedTensor& t) {
  std::vector<uint32_t> w(t.data.size() / 4);
  std::memcpy(w.data(), t.data.data(), t.data.size());
  return w;
}

const NamedTensor& find_tensor(const std::vector<NamedTensor>& ts, const std::string& name) {
  for (const auto& t : ts)
    if (t.name == name) return t;
  ADD_FAILURE() << "no tensor " << name;
  static NamedTensor none;
  return none;
}

// A one-row weight holding codes q (scales 1).
QuantizedWeight row_weight(const std::vector<int>& q, int bits) {
  QuantizedWeight w = make_quantized_weight(1, static_cast<int64_t>(q.size()), bits, QuantStrategy::kChannel, 0, true,
                                            DType::kBF16);
  for (size_t c = 0; c < q.size(); ++c) w.set_code(0, static_cast<int64_t>(c), q[c]);
  return w;
}

TEST(SpecVectors, V1_CtInt4RowWithPadding) {
  const std::vector<int> q = {-8, -7, -1, 0, 1, 2, 3, 7, 5, -3};
  std::vector<NamedTensor> ts = compressed_tensors_tensors("m", row_weight(q, 4));
  EXPECT_EQ(words_of(find_tensor(ts, "m.weight_packed")), (std::vector<uint32_t>{0xFBA98710u, 0x0000005Du}));
  EXPECT_EQ(static_cast<int32_t>(0xFBA98710u), -72775920);
  // And back: unpack the spec words and crop to in = 10.
  const uint32_t words[2] = {0xFBA98710u, 0x0000005Du};
  uint8_t u[16];
  unpack_codes(words, 16, 4, BitPacking::kDense, u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(u[i] - 8, q[i]) << i;
  for (int i = 10; i < 16; ++i) EXPECT_EQ(u[i], 0) << "padding nibble " << i;
}

TEST(SpecVectors, V2_CtInt8Row) {
  const std::vector<int> q = {-128, -1, 0, 127, 5};
  std::vector<NamedTensor> ts = compressed_tensors_tensors("m", row_weight(q, 8));
  EXPECT_EQ(words_of(find_tensor(ts, "m.weight_packed")), (std::vector<uint32_t>{0xFF807F00u, 0x00000085u}));
}

TEST(SpecVectors, V3_CtInt4ZeroPointsPackedAlongOut) {
  QuantizedWeight w = make_quantized_weight(10, 64, 4, QuantStrategy::kGroup, 32, /*symmetric=*/false, DType::kBF16);
  ASSERT_EQ(w.num_groups, 2);
  for (int o = 0; o < 10; ++o)
    for (int g = 0; g < 2; ++g) w.zeros[o * 2 + g] = static_cast<int8_t>(o - 8);
  std::vector<NamedTensor> ts = compressed_tensors_tensors("m", w);
  const NamedTensor& zp = find_tensor(ts, "m.weight_zero_point");
  EXPECT_EQ(zp.dtype, DType::kI32);
  EXPECT_EQ(zp.shape, (Shape{2, 2}));
  EXPECT_EQ(words_of(zp), (std::vector<uint32_t>{0x76543210u, 0x76543210u, 0x00000098u, 0x00000098u}));
}

TEST(SpecVectors, V4_GptqQweightWordFromIndependentPacker) {
  // Column 0 of eight input rows; the loader-side decoding is tested in loader_test.cpp.
  std::vector<int> u = {0, 3, 6, 9, 12, 15, 2, 5};
  EXPECT_EQ(testing::spec_gptq_pack_qweight(u, 8, 1, 4), (std::vector<uint32_t>{0x52FC9630u}));
}

TEST(SpecVectors, V5_GptqSymmetricQzerosWords) {
  std::vector<int> z(8, 8);
  EXPECT_EQ(testing::spec_gptq_pack_qzeros(z, 1, 8, 4, /*v2=*/false), (std::vector<uint32_t>{0x77777777u}));
  EXPECT_EQ(testing::spec_gptq_pack_qzeros(z, 1, 8, 4, /*v2=*/true), (std::vector<uint32_t>{0x88888888u}));
  EXPECT_EQ(static_cast<int32_t>(0x88888888u), -2004318072);
}

TEST(SpecVectors, V6_AwqInterleave) {
  std::vector<int> u = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_EQ(testing::spec_awq_pack(u, 1, 8), (std::vector<uint32_t>{0x75316420u}));
  // Unpacking with REVERSE gives the columns back.
  for (int j = 0; j < 8; ++j) EXPECT_EQ((0x75316420u >> (4 * kAwqReverse[j])) & 0xF, static_cast<uint32_t>(j));
  for (int i = 0; i < 8; ++i) EXPECT_EQ(kAwqReverse[kAwqOrder[i]], i);
}

TEST(SpecVectors, V7_CanonicalNibblesMatchTorchaoPlain) {
  // The canonical INT4 row layout is torchao's plain layout: low nibble = even column, signed.
  QuantizedWeight w = row_weight({-8, 7, -1, 3}, 4);
  EXPECT_EQ(w.codes, (std::vector<uint8_t>{0x78, 0x3F}));
  EXPECT_EQ(w.code(0, 0), -8);
  EXPECT_EQ(w.code(0, 1), 7);
  EXPECT_EQ(w.code(0, 2), -1);
  EXPECT_EQ(w.code(0, 3), 3);
}

TEST(SpecVectors, V8_V9_ThreeBitDenseAndLegacy) {
  std::vector<uint8_t> codes(32);
  for (int i = 0; i < 32; ++i) codes[i] = static_cast<uint8_t>(i % 8);
  std::vector<uint32_t> dense(static_cast<size_t>(packed_words(32, 3, BitPacking::kDense)));
  pack_codes(codes.data(), 32, 3, BitPacking::kDense, dense.data());
  EXPECT_EQ(dense, (std::vector<uint32_t>{0x88FAC688u, 0xC688FAC6u, 0xFAC688FAu}));
  std::vector<uint32_t> legacy(static_cast<size_t>(packed_words(32, 3, BitPacking::kLegacy)));
  pack_codes(codes.data(), 32, 3, BitPacking::kLegacy, legacy.data());
  EXPECT_EQ(legacy, (std::vector<uint32_t>{0x08FAC688u, 0x1A23EB1Au, 0x2C688FACu, 0x0000003Eu}));
  std::vector<uint8_t> back(32);
  unpack_codes(dense.data(), 32, 3, BitPacking::kDense, back.data());
  EXPECT_EQ(back, codes);
  unpack_codes(legacy.data(), 32, 3, BitPacking::kLegacy, back.data());
  EXPECT_EQ(back, codes);
}

TEST(SpecVectors, DequantizationChecks) {
  // CT symmetric INT4, s = 0.5: code 0x0 -> -4.0, code 0xF -> 3.5.
  QuantizedWeight w = make_quantized_weight(1, 2, 4, QuantStrategy::kChannel, 0, true, DType::kBF16);
  w.scales.as<uint16_t>()[0] = float_to_bf16(0.5f);
  w.set_code(0, 0, 0x0 - 8);
  w.set_code(0, 1, 0xF - 8);
  std::vector<float> d = dequantize_float(w);
  EXPECT_EQ(d[0], -4.0f);
  EXPECT_EQ(d[1], 3.5f);
}

TEST(Pack, RandomRoundTripsEveryWidthAndLayout) {
  NB_SEEDED_RNG(rng);
  for (int bits = 1; bits <= 8; ++bits) {
    for (BitPacking p : {BitPacking::kDense, BitPacking::kLegacy}) {
      for (int64_t n : {1, 7, 31, 32, 33, 97, 130}) {
        std::vector<uint8_t> codes(static_cast<size_t>(n));
        for (auto& c : codes) c = static_cast<uint8_t>(rand_int(rng, 0, (1 << bits) - 1));
        std::vector<uint32_t> words(static_cast<size_t>(packed_words(n, bits, p)));
        pack_codes(codes.data(), n, bits, p, words.data());
        std::vector<uint8_t> back(static_cast<size_t>(n));
        unpack_codes(words.data(), n, bits, p, back.data());
        EXPECT_EQ(back, codes) << "bits " << bits << " n " << n;
        // Independent statement of both layouts: bit i*b of the stream (dense) or word i/pf (legacy).
        for (int64_t i = 0; i < n; ++i) {
          uint32_t v = 0;
          for (int k = 0; k < bits; ++k) {
            int64_t bit = p == BitPacking::kDense ? i * bits + k : (i / (32 / bits)) * 32 + (i % (32 / bits)) * bits + k;
            v |= ((words[bit / 32] >> (bit % 32)) & 1u) << k;
          }
          ASSERT_EQ(v, codes[i]) << "bits " << bits << " n " << n << " i " << i;
        }
      }
    }
  }
  EXPECT_EQ(packed_words(10, 4, BitPacking::kDense), 2);
  EXPECT_EQ(packed_words(33, 3, BitPacking::kDense), 4);   // ceil(99/32)
  EXPECT_EQ(packed_words(33, 3, BitPacking::kLegacy), 4);  // ceil(33/10)
  EXPECT_EQ(packed_words(31, 3, BitPacking::kLegacy), 4);
  EXPECT_EQ(packed_words(31, 3, BitPacking::kDense), 3);
}

TEST(Pack, VersionsChooseThePacking) {
  EXPECT_EQ(compare_versions("0.9.4", "0.12.2"), -1);
  EXPECT_EQ(compare_versions("0.12.2", "0.12.2"), 0);
  EXPECT_EQ(compare_versions("0.18.0", "0.17.1"), 1);
  EXPECT_EQ(compare_versions("0.12.2.dev3", "0.12.2"), 0);
  EXPECT_EQ(ct_packing_for_version("0.17.1"), BitPacking::kLegacy);
  EXPECT_EQ(ct_packing_for_version("0.18.0"), BitPacking::kDense);
  EXPECT_EQ(ct_packing_for_version("0.20.0"), BitPacking::kDense);
  EXPECT_EQ(ct_packing_for_version(""), BitPacking::kDense);
}

}  // namespace
}  // namespace nb::quant
