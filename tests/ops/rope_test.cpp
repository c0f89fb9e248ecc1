// RoPE: the reference against a direct complex rotation (x1 + i x2) * factor * e^{i theta} in double,
// with theta = float(position) * inv_freq[i] as transformers forms it (tolerance 1e-6 of the norm:
// F32 cos/sin and products); NeoX (rotate_half) and GPT-J (interleaved pairs) pairings, partial
// rotary (dims past rotary_dim untouched, bit for bit), attention_factor != 1. The fast path
// performs the same F32 operations, so it must match the reference exactly.
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

}  // namespace
}  // namespace nb::opstest
