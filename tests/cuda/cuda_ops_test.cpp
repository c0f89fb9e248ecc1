// Every op of the CUDA backend against the CPU scalar reference (make_cpu_backend(true)), over a
// shape sweep, with bf16 activations on the GPU and F32 on the CPU. Inputs are fresh random numbers
// (seeded from the clock, printed on failure), rounded to bf16 so both sides start from identical
// values; they are uploaded as F32 and cast on the GPU. Error = ||gpu - ref|| / ||ref||.
// Tolerances: 1e-2 for ops whose result passes through bf16 storage of intermediates (linear, LoRA,
// attention, rope), 5e-3 for single-rounding elementwise ops (one bf16 rounding is <= 2^-9 relative).
// Every test skips when no usable GPU is present (CI and the dev machines: CUDA error 35).
#include "cuda_fixture.h"

namespace nb::cuda_test {
namespace {

// ---- factory ---------------------------------------------------------------------------------------

TEST(CudaFactory, FailsCleanlyOrRejectsBadArguments) {
#ifndef NIBBLE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  auto r = make_cuda_backend(0, DType::kBF16);
  if (!r.is_ok()) {
    // No GPU here: a clear message, never a crash.
    const std::string& m = r.status().message();
    EXPECT_TRUE(m.find("no usable CUDA device") != std::string::npos || m.find("compute capability") != std::string::npos)
        << m;
    return;
  }
  EXPECT_EQ((*r)->device(), Device::kCuda);
  EXPECT_FALSE(make_cuda_backend(9999, DType::kBF16).is_ok());
  EXPECT_FALSE(make_cuda_backend(0, DType::kF32).is_ok());
#endif
}

// ---- elementwise -----------------------------------------------------------------------------------

TEST_F(CudaOps, ElementwiseAddMulSiluCast) {
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {33, 333}, {16, 4096}}) {
    const size_t n = static_cast<size_t>(rows * cols);
    std::vector<float> a = rnd(n, 3.f), b = rnd(n, 2.f), col = rnd(static_cast<size_t>(rows));
    DeviceTensor ga = up(a, {rows, cols}), gb = up(b, {rows, cols}), gcol = up(col, {rows, 1});
    DeviceTensor out = ops::make_device_tensor(*gpu_, DType::kBF16, {rows, cols});
    std::vector<float> ref(n);
    auto check = [&](const char* what) {
      EXPECT_LT(rel_err(down(out.view()), ref), kTolElementwise) << what << " " << rows << "x" << cols << SEED_INFO;
    };
    gpu_->add(out.view(), ga.view(), gb.view());
    cpu_->add(host(ref, {rows, cols}), host(a, {rows, cols}), host(b, {rows, cols}));
    check("add");
    gpu_->mul(out.view(), ga.view(), gb.view());
    cpu_->mul(host(ref, {rows, cols}), host(a, {rows, cols}), host(b, {rows, cols}));
    check("mul");
    if (cols > 1) {
      gpu_->mul(out.view(), ga.view(), gcol.view());
      cpu_->mul(host(ref, {rows, cols}), host(a, {rows, cols}), host(col, {rows, 1}));
      check("mul by [rows, 1]");
    }
    gpu_->cast(out.view(), ga.view());
    ref = a;
    check("cast");
  }
}

TEST_F(CudaOps, SiluMulOnColumnSlices) {
  // gate and up are the two halves of one [M, 2I] buffer (strided views), as a fused gate_up projection.
  for (auto [m, inter] : {std::pair<int64_t, int64_t>{1, 5}, {3, 128}, {33, 1000}}) {
    std::vector<float> gu = rnd(static_cast<size_t>(m * 2 * inter), 4.f);
    DeviceTensor g = up(gu, {m, 2 * inter});
    TensorView gate = g.view(), upv = g.view();
    gate.shape = upv.shape = {m, inter};
    gate.strides = upv.strides = {2 * inter, 1};
    upv.data = static_cast<uint16_t*>(g.buffer.data()) + inter;
    DeviceTensor out = ops::make_device_tensor(*gpu_, DType::kBF16, {m, inter});
    gpu_->silu_mul(out.view(), gate, upv);
    std::vector<float> ref(static_cast<size_t>(m * inter));
    TensorView hg = host(gu, {m, inter}), hu = hg;
    hg.strides = hu.strides = {2 * inter, 1};
    hu.data = gu.data() + inter;
    cpu_->silu_mul(host(ref, {m, inter}), hg, hu);
    EXPECT_LT(rel_err(down(out.view()), ref), kTolElementwise) << m << "x" << inter << SEED_INFO;
  }
}

TEST_F(CudaOps, EmbeddingAndRmsNorm) {
  for (auto [rows, hidden] : {std::pair<int64_t, int64_t>{1, 64}, {3, 333}, {33, 4096}}) {
    const int64_t vocab = 97;
    std::vector<float> table = rnd(static_cast<size_t>(vocab * hidden)), w = rnd(static_cast<size_t>(hidden), 2.f);
    std::vector<int32_t> ids(static_cast<size_t>(rows));
    for (auto& id : ids) id = static_cast<int32_t>(rng_() % vocab);
    DeviceTensor gt = up(table, {vocab, hidden}), gw = up(w, {hidden}), gids = up_i32(ids);
    DeviceTensor x = ops::make_device_tensor(*gpu_, DType::kBF16, {rows, hidden});
    gpu_->embedding(x.view(), gt.view(), gids.buffer.as<int32_t>(), rows);
    std::vector<float> ref(static_cast<size_t>(rows * hidden));
    cpu_->embedding(host(ref, {rows, hidden}), host(table, {vocab, hidden}), ids.data(), rows);
    EXPECT_EQ(rel_err(down(x.view()), ref), 0.0) << "embedding copies bf16 values exactly" << SEED_INFO;
    // rms_norm in place (out == x), as the model does for the residual stream's copy.
    gpu_->rms_norm(x.view(), x.view(), gw.view(), 1e-5f);
    std::vector<float> normed(ref.size());
    cpu_->rms_norm(host(normed, {rows, hidden}), host(ref, {rows, hidden}), host(w, {hidden}), 1e-5f);
    EXPECT_LT(rel_err(down(x.view()), normed), kTolElementwise) << rows << "x" << hidden << SEED_INFO;
  }
}

TEST_F(CudaOps, RopeNeoxAndGptjPartial) {
  struct Case { int64_t tokens, heads, d; int rotary; bool neox; float factor; };
  for (const Case& c : {Case{1, 4, 64, 64, true, 1.f}, Case{7, 3, 128, 64, true, 1.2f}, Case{5, 2, 96, 96, false, 1.f},
                        Case{9, 5, 64, 32, false, 0.9f}}) {
    std::vector<float> x = rnd(static_cast<size_t>(c.tokens * c.heads * c.d), 2.f);
    std::vector<float> inv(static_cast<size_t>(c.rotary / 2));
    for (size_t i = 0; i < inv.size(); ++i) inv[i] = std::pow(10000.f, -2.f * static_cast<float>(i) / c.rotary);
    std::vector<int32_t> pos(static_cast<size_t>(c.tokens));
    for (auto& p : pos) p = static_cast<int32_t>(rng_() % 5000);
    DeviceTensor gx = up(x, {c.tokens, c.heads, c.d}), ginv = up(inv, {c.rotary / 2}, DType::kF32), gpos = up_i32(pos);
    ops::RopeArgs ga{ginv.buffer.as<float>(), c.rotary, c.factor, c.neox}, ca{inv.data(), c.rotary, c.factor, c.neox};
    gpu_->rope(gx.view(), gpos.buffer.as<int32_t>(), ga);
    std::vector<float> ref = x;
    cpu_->rope(host(ref, {c.tokens, c.heads, c.d}), pos.data(), ca);
    EXPECT_LT(rel_err(down(gx.view()), ref), kTol) << "rotary " << c.rotary << " neox " << c.neox << SEED_INFO;
  }
}


TEST_F(CudaOps, SampleGreedyAndSeeded) {
  const int64_t rows = 6, vocab = 1001;
  std::vector<float> logits = rnd(static_cast<size_t>(rows * vocab), 8.f);
  // Row 1: a tie between two maxima (the lower index wins); row 2: NaNs are skipped.
  logits[static_cast<size_t>(vocab + 17)] = logits[static_cast<size_t>(vocab + 500)] = 9.f;
  for (int64_t c = 0; c < vocab; c += 3) logits[static_cast<size_t>(2 * vocab + c)] = NAN;
  std::vector<ops::SamplingParams> params(static_cast<size_t>(rows));
  params[3] = {0.7f, 0, 1.f, 11};
  params[4] = {1.0f, 40, 1.f, 12};
  params[5] = {1.3f, 0, 0.9f, 13};
  for (DType dt : {DType::kBF16, DType::kF32}) {
    DeviceTensor g = up(logits, {rows, vocab}, dt);
    for (uint64_t step : {0ull, 5ull}) {
      std::vector<int32_t> got(static_cast<size_t>(rows), -1), ref(static_cast<size_t>(rows), -2);
      gpu_->sample(got.data(), g.view(), params, step);
      cpu_->sample(ref.data(), host(logits, {rows, vocab}), params, step);
      EXPECT_EQ(got, ref) << dtype_name(dt) << " step " << step << SEED_INFO;
    }
  }
}

}  // namespace
}  // namespace nb::cuda_test
