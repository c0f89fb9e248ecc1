// RoPE: the reference against a direct complex rotation (x1 + i x2) * factor * e^{i theta} in double,
// with theta = float(position) * inv_freq[i] as transformers forms it (tolerance 1e-6 of the norm:
// F32 cos/sin and products); NeoX (rotate_half) and GPT-J (interleaved pairs) pairings, partial
// rotary (dims past rotary_dim untouched, bit for bit), attention_factor != 1. The fast path
// performs the same F32 operations, so it must match the reference exactly. Strided 3-D views
// {s0, s1, 1} (MLA's rope parts) must rotate exactly as a contiguous copy does.
#include <complex>

#include "ops_test_util.h"

namespace nb::opstest {
namespace {

struct RopeCase {
  int tokens, heads, d, rotary_dim;
  bool neox;
  float factor;
};

TEST(Rope, BothStylesPartialRotaryFastVsReferenceVsTruth) {
  NB_SEED_TRACE();
  Backends be;
  const std::vector<RopeCase> cases = {
      {1, 32, 64, 64, true, 1.f},  {7, 8, 64, 64, true, 1.f},   {5, 3, 128, 64, true, 1.3f},
      {9, 2, 80, 40, true, 1.f},   {6, 4, 64, 64, false, 1.f},  {4, 5, 96, 34, false, 0.8f},
      {33, 2, 18, 18, true, 1.f},  {3, 1, 10, 6, false, 1.f},
  };
  uint64_t salt = 1;
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << "T " << c.tokens << " heads " << c.heads << " d " << c.d << " rotary " << c.rotary_dim
                                      << (c.neox ? " neox" : " gptj") << " factor " << c.factor);
    Rng rng(salt++);
    std::vector<float> inv_freq(static_cast<size_t>(c.rotary_dim / 2));
    for (int i = 0; i < c.rotary_dim / 2; ++i)
      inv_freq[static_cast<size_t>(i)] = 1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / static_cast<float>(c.rotary_dim));
    std::vector<int32_t> pos(static_cast<size_t>(c.tokens));
    for (auto& p : pos) p = rng.randint(0, 8000);
    const std::vector<float> x = rng.vec(static_cast<size_t>(c.tokens * c.heads * c.d));
    ops::RopeArgs args;
    args.inv_freq = inv_freq.data();
    args.rotary_dim = c.rotary_dim;
    args.attention_factor = c.factor;
    args.neox = c.neox;
    // Truth.
    std::vector<double> truth(x.begin(), x.end());
    const int half = c.rotary_dim / 2;
    for (int t = 0; t < c.tokens; ++t)
      for (int h = 0; h < c.heads; ++h)
        for (int i = 0; i < half; ++i) {
          const size_t base = static_cast<size_t>((t * c.heads + h) * c.d);
          const size_t i1 = base + static_cast<size_t>(c.neox ? i : 2 * i), i2 = base + static_cast<size_t>(c.neox ? i + half : 2 * i + 1);
          const double theta = static_cast<float>(pos[static_cast<size_t>(t)]) * inv_freq[static_cast<size_t>(i)];
          const std::complex<double> z = std::complex<double>(x[i1], x[i2]) * std::polar(static_cast<double>(c.factor), theta);
          truth[i1] = z.real();
          truth[i2] = z.imag();
        }
    std::vector<float> ref = x, fast = x;
    be.ref->rope(view(ref, {c.tokens, c.heads, c.d}), pos.data(), args);
    be.fast->rope(view(fast, {c.tokens, c.heads, c.d}), pos.data(), args);
    EXPECT_LE(rel_err(ref, truth), 1e-6) << "reference vs complex rotation";
    int differ = 0, touched_tail = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      differ += fast[i] != ref[i];
      if (static_cast<int>(i % static_cast<size_t>(c.d)) >= c.rotary_dim) touched_tail += ref[i] != x[i] || fast[i] != x[i];
    }
    EXPECT_EQ(differ, 0) << "fast vs reference must be bit-identical";
    EXPECT_EQ(touched_tail, 0) << "dims past rotary_dim must be untouched";
  }
}

// A 3-D view with strides {s0, s1, 1} (MLA: the rope part at the end of each head of q; the one
// rope head at the end of the latent row): the same rotation as a contiguous copy, bit for bit, on
// both backends, and nothing outside the view touched.
TEST(Rope, StridedViewMatchesContiguous) {
  NB_SEED_TRACE();
  Backends be;
  struct StridedCase {
    int tokens, heads, d, rotary_dim;
    int64_t s0, s1, offset;  // view strides and first element inside the buffer
    bool neox;
  };
  const std::vector<StridedCase> cases = {
      {5, 4, 64, 64, 4 * 192, 192, 128, false},  // q [T, 4, 192], rope dims 128..191 of each head
      {3, 16, 64, 64, 16 * 192, 192, 128, true},
      {7, 1, 64, 64, 576, 64, 512, false},        // latent [T, 576]: k_rope = columns 512..575
      {1, 1, 64, 64, 576, 64, 512, false},        // one token (the view is also "contiguous")
      {6, 3, 18, 10, 3 * 40 + 5, 40, 7, true},    // partial rotary, padded rows, odd sizes
      {4, 2, 12, 12, 13, 100, 1, false},          // heads further apart than tokens
  };
  uint64_t salt = 100;
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << "T " << c.tokens << " heads " << c.heads << " d " << c.d << " strides {" << c.s0 << ", "
                                      << c.s1 << ", 1} offset " << c.offset << (c.neox ? " neox" : " gptj"));
    Rng rng(salt++);
    std::vector<float> inv_freq(static_cast<size_t>(c.rotary_dim / 2));
    for (auto& f : inv_freq) f = rng.uniform(1e-4f, 1.f);
    std::vector<int32_t> pos(static_cast<size_t>(c.tokens));
    for (auto& p : pos) p = rng.randint(0, 100000);
    ops::RopeArgs args;
    args.inv_freq = inv_freq.data();
    args.rotary_dim = c.rotary_dim;
    args.neox = c.neox;
    args.attention_factor = 1.25f;
    const int64_t size = c.offset + (c.tokens - 1) * c.s0 + (c.heads - 1) * c.s1 + c.d;
    const std::vector<float> buf = rng.vec(static_cast<size_t>(size));
    // The view's elements as a contiguous [T, heads, d] copy, rotated by the reference.
    std::vector<float> dense;
    for (int t = 0; t < c.tokens; ++t)
      for (int h = 0; h < c.heads; ++h)
        for (int i = 0; i < c.d; ++i) dense.push_back(buf[static_cast<size_t>(c.offset + t * c.s0 + h * c.s1 + i)]);
    std::vector<float> expect = dense;
    be.ref->rope(view(expect, {c.tokens, c.heads, c.d}), pos.data(), args);
    for (ops::Backend* b : {be.ref.get(), be.fast.get()}) {
      SCOPED_TRACE(b->name());
      std::vector<float> x = buf;
      b->rope(TensorView{x.data() + c.offset, DType::kF32, {c.tokens, c.heads, c.d}, {c.s0, c.s1, 1}, Device::kCpu}, pos.data(), args);
      std::vector<uint8_t> inside(x.size(), 0);
      int differ = 0;
      for (int t = 0; t < c.tokens; ++t)
        for (int h = 0; h < c.heads; ++h)
          for (int i = 0; i < c.d; ++i) {
            const size_t at = static_cast<size_t>(c.offset + t * c.s0 + h * c.s1 + i);
            inside[at] = 1;
            differ += std::memcmp(&x[at], &expect[static_cast<size_t>((t * c.heads + h) * c.d + i)], 4) != 0;
          }
      int outside = 0;
      for (size_t i = 0; i < x.size(); ++i) outside += !inside[i] && std::memcmp(&x[i], &buf[i], 4) != 0;
      EXPECT_EQ(differ, 0) << "strided rotation differs from the contiguous one";
      EXPECT_EQ(outside, 0) << "elements outside the view changed";
    }
  }
}

}  // namespace
}  // namespace nb::opstest
