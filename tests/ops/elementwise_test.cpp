// Row-wise ops against formulas evaluated here in double, and fast against reference: embedding and
// cast (exact: conversions with the test's own rounding), add and mul (exact: one F32 rounding),
// rms_norm and silu_mul (tolerance 1e-6 of the norm). Odd widths, row strides, in-place calls.
#include "ops_test_util.h"

namespace nb::opstest {
namespace {

const int64_t kWidths[] = {1, 7, 64, 130, 2048};
const int64_t kRows[] = {1, 5, 33};

TEST(Elementwise, RmsNorm) {
  NB_SEED_TRACE();
  Backends be;
  uint64_t salt = 1;
  for (DType wdt : {DType::kF32, DType::kBF16, DType::kF16})
    for (int64_t h : kWidths)
      for (int64_t rows : kRows) {
        SCOPED_TRACE(::testing::Message() << dtype_name(wdt) << " rows " << rows << " H " << h);
        Rng rng(salt++);
        const float eps = 1e-5f;
        std::vector<float> x = rng.vec(static_cast<size_t>(rows * h)), w = rand_in(rng, static_cast<size_t>(h), wdt);
        std::vector<uint8_t> wraw = encode(w, wdt);
        std::vector<double> truth(x.size());
        for (int64_t r = 0; r < rows; ++r) {
          double ss = 0;
          for (int64_t c = 0; c < h; ++c) ss += static_cast<double>(x[static_cast<size_t>(r * h + c)]) * x[static_cast<size_t>(r * h + c)];
          const double inv = 1.0 / std::sqrt(ss / static_cast<double>(h) + eps);
          for (int64_t c = 0; c < h; ++c) truth[static_cast<size_t>(r * h + c)] = w[static_cast<size_t>(c)] * x[static_cast<size_t>(r * h + c)] * inv;
        }
        std::vector<float> ref(x.size()), fast = x;  // fast runs in place
        poison(ref);
        be.ref->rms_norm(view(ref, {rows, h}), view(x, {rows, h}), view(wraw, wdt, {h}), eps);
        be.fast->rms_norm(view(fast, {rows, h}), view(fast, {rows, h}), view(wraw, wdt, {h}), eps);
        EXPECT_LE(rel_err(ref, truth), 1e-6);
        EXPECT_LE(rel_err(fast, ref), 1e-6);
      }
}

TEST(Elementwise, AddMulSiluMul) {
  NB_SEED_TRACE();
  Backends be;
  uint64_t salt = 100;
  for (int64_t h : kWidths)
    for (int64_t rows : kRows) {
      SCOPED_TRACE(::testing::Message() << "rows " << rows << " H " << h);
      Rng rng(salt++);
      const int64_t ld = h + 3;  // a and out row-strided, b contiguous
      std::vector<float> a = rng.vec(static_cast<size_t>(rows * ld)), b = rng.vec(static_cast<size_t>(rows * h));
      std::vector<float> rs = rng.vec(static_cast<size_t>(rows));
      for (size_t i = 0; i < a.size(); i += 5) a[i] *= 40.f;  // large gates: exp overflow/underflow paths
      std::vector<float> sum_t, prod_t, bcast_t;
      std::vector<double> silu_t;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < h; ++c) {
          const float av = a[static_cast<size_t>(r * ld + c)], bv = b[static_cast<size_t>(r * h + c)];
          sum_t.push_back(static_cast<float>(static_cast<double>(av) + bv));
          prod_t.push_back(static_cast<float>(static_cast<double>(av) * bv));
          bcast_t.push_back(static_cast<float>(static_cast<double>(av) * rs[static_cast<size_t>(r)]));
          silu_t.push_back(av / (1.0 + std::exp(-static_cast<double>(av))) * bv);
        }
      for (ops::Backend* bk : {be.ref.get(), be.fast.get()}) {
        SCOPED_TRACE(bk->name());
        auto run = [&](auto op) {
          std::vector<float> out(static_cast<size_t>(rows * ld));
          poison(out);
          op(strided(out, rows, h, ld));
          std::vector<float> dense;
          for (int64_t r = 0; r < rows; ++r) dense.insert(dense.end(), out.begin() + r * ld, out.begin() + r * ld + h);
          return dense;
        };
        const TensorView av = strided(a, rows, h, ld), bv = view(b, {rows, h}), rv = view(rs, {rows, 1});
        EXPECT_EQ(run([&](TensorView o) { bk->add(o, av, bv); }), sum_t);
        EXPECT_EQ(run([&](TensorView o) { bk->mul(o, av, bv); }), prod_t);
        EXPECT_EQ(run([&](TensorView o) { bk->mul(o, av, rv); }), bcast_t);
        EXPECT_LE(rel_err(run([&](TensorView o) { bk->silu_mul(o, av, bv); }), silu_t), 1e-6);
      }
    }
}

TEST(Elementwise, CastAndEmbedding) {
  NB_SEED_TRACE();
  Backends be;
  const DType types[] = {DType::kF32, DType::kBF16, DType::kF16};
  uint64_t salt = 200;
  for (DType from : types)
    for (DType to : types)
      for (int64_t h : {int64_t{7}, int64_t{130}}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(from) << " -> " << dtype_name(to) << " H " << h);
        Rng rng(salt++);
        const int64_t rows = 5;
        std::vector<float> src = rand_in(rng, static_cast<size_t>(rows * h), from);
        std::vector<uint8_t> in = encode(src, from);
        std::vector<float> expect(src.size());
        for (size_t i = 0; i < src.size(); ++i) expect[i] = static_cast<float>(round_to(src[i], to));
        for (ops::Backend* bk : {be.ref.get(), be.fast.get()}) {
          std::vector<uint8_t> out(dtype_bytes(to, src.size()), 0xFF);
          bk->cast(view(out, to, {rows, h}), view(in, from, {rows, h}));
          std::vector<float> got(src.size());
          for (size_t i = 0; i < got.size(); ++i) got[i] = load_as_float(out.data(), to, i);
          EXPECT_EQ(got, expect) << bk->name();
        }
        // embedding: table of dtype `from`, rows gathered into F32 with a row stride.
        const int64_t vocab = rows, tokens = 9, ld = h + 2;
        std::vector<int32_t> ids(tokens);
        for (auto& id : ids) id = rng.randint(0, static_cast<int>(vocab - 1));
        for (ops::Backend* bk : {be.ref.get(), be.fast.get()}) {
          std::vector<float> out(static_cast<size_t>(tokens * ld));
          poison(out);
          bk->embedding(strided(out, tokens, h, ld), view(in, from, {vocab, h}), ids.data(), tokens);
          int wrong = 0;
          for (int64_t t = 0; t < tokens; ++t)
            for (int64_t c = 0; c < h; ++c) wrong += out[static_cast<size_t>(t * ld + c)] != src[static_cast<size_t>(ids[static_cast<size_t>(t)] * h + c)];
          EXPECT_EQ(wrong, 0) << bk->name();
        }
      }
}

TEST(Backend, MemoryAndModes) {
  Backends be;
  EXPECT_EQ(be.fast->activation_dtype(), DType::kF32);
  EXPECT_EQ(be.fast->device(), Device::kCpu);
  EXPECT_NE(be.fast->name(), be.ref->name());
  Rng rng(300);
  const std::vector<float> src = rng.vec(100);
  void* p = be.fast->alloc(400);
  ASSERT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  be.fast->upload(p, src.data(), 400);
  std::vector<float> back(100);
  be.fast->download(back.data(), p, 400);
  EXPECT_EQ(back, src);
  be.fast->dealloc(p);
  // A weight packed by the reference backend still runs on the fast backend (and gives its result).
  std::vector<float> w = rng.vec(12), x = rng.vec(8), o1(6), o2(6);
  auto rw = be.ref->pack_dense(view(w, {3, 4}));
  ASSERT_TRUE(rw.is_ok());
  be.fast->linear(view(o1, {2, 3}), view(x, {2, 4}), **rw, nullptr);
  be.ref->linear(view(o2, {2, 3}), view(x, {2, 4}), **rw, nullptr);
  EXPECT_EQ(o1, o2);
}

}  // namespace
}  // namespace nb::opstest
