// linear on the CUDA backend (GEMV for small M, dequantize + cuBLAS for large M, dense cuBLAS) against
// the CPU reference: INT4 and INT8, group sizes 32/64/128/channel, symmetric and asymmetric, g_idx,
// BF16/F16/F32 scales, bias, odd shapes, M = 1 ... 200 (both sides of every path switch), row-strided x
// and out; the tiled INT4 layout (w4_tiled.cu) wherever a weight qualifies, split-K on long rows.
// Tolerance 1e-2 (bf16 activations, bf16 output). Method: cuda_ops_test.cpp.
#include "cuda_fixture.h"
#ifdef NIBBLE_HAVE_CUDA
#include "backends/cuda/cuda_internal.h"
#endif

namespace nb::cuda_test {
namespace {

struct QCase {
  int64_t n, k, gs;  // gs <= 0: channel-wise
  bool asym, gidx;
  int bits;
  DType scale_dtype;
  bool bias;
};

// A random canonical weight and the arrays its view points into.
struct QuantData {
  std::vector<uint8_t> codes, scales;
  std::vector<int8_t> zeros;
  std::vector<int32_t> g_idx;
  ops::QuantWeightView view;
};

QuantData make_quant(const QCase& c, std::mt19937_64& rng) {
  QuantData d;
  ops::QuantWeightView& w = d.view;
  w.out = c.n;
  w.in = c.k;
  w.bits = c.bits;
  w.group_size = c.gs > 0 ? c.gs : c.k;
  w.num_groups = (c.k + w.group_size - 1) / w.group_size;
  w.scale_dtype = c.scale_dtype;
  const int64_t row = c.bits == 4 ? (c.k + 1) / 2 : c.k;
  d.codes.resize(static_cast<size_t>(c.n * row));
  for (auto& b : d.codes) b = static_cast<uint8_t>(rng());
  const size_t g = static_cast<size_t>(c.n * w.num_groups);
  d.scales.resize(dtype_bytes(c.scale_dtype, g));
  std::uniform_real_distribution<float> sd(0.005f, 0.05f);
  for (size_t i = 0; i < g; ++i) {
    const float s = c.bits == 4 ? sd(rng) : sd(rng) / 16;
    if (c.scale_dtype == DType::kBF16) reinterpret_cast<uint16_t*>(d.scales.data())[i] = float_to_bf16(s);
    if (c.scale_dtype == DType::kF16) reinterpret_cast<uint16_t*>(d.scales.data())[i] = float_to_fp16(s);
    if (c.scale_dtype == DType::kF32) reinterpret_cast<float*>(d.scales.data())[i] = s;
  }
  if (c.asym) {
    d.zeros.resize(g);
    for (auto& z : d.zeros) z = static_cast<int8_t>(static_cast<int>(rng() % 15) - 7);
  }
  if (c.gidx) {  // activation order: a random permutation of the columns, grouped by rank
    std::vector<int32_t> perm(static_cast<size_t>(c.k));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    d.g_idx.resize(perm.size());
    for (size_t i = 0; i < perm.size(); ++i) d.g_idx[i] = static_cast<int32_t>(perm[i] / w.group_size);
  }
  w.codes = d.codes.data();
  w.scales = d.scales.data();
  w.zeros = c.asym ? d.zeros.data() : nullptr;
  w.g_idx = c.gidx ? d.g_idx.data() : nullptr;
  return d;
}

std::vector<QCase> quant_cases() {
  std::vector<QCase> cases;
  const DType sdt[3] = {DType::kBF16, DType::kF16, DType::kF32};
  int i = 0;
  for (auto [n, k] : {std::pair<int64_t, int64_t>{64, 128}, {33, 333}, {130, 512}})
    for (int64_t gs : {32, 64, 128, 0})
      for (bool asym : {false, true})
        for (bool gidx : {false, true}) {
          cases.push_back({n, k, gs, asym, gidx, 4, sdt[i % 3], i % 3 == 1});
          ++i;
        }
  // Long rows: the tiled INT4 kernel splits K over several warps (kw up to 16).
  for (auto [n, k] : {std::pair<int64_t, int64_t>{48, 2048}, {16, 4096}})
    for (bool asym : {false, true}) {
      cases.push_back({n, k, 128, asym, false, 4, sdt[i % 3], asym});
      ++i;
    }
  for (auto [n, k] : {std::pair<int64_t, int64_t>{64, 128}, {33, 333}})
    for (int64_t gs : {64, 0})
      for (bool asym : {false, true}) cases.push_back({n, k, gs, asym, gs == 64 && asym, 8, sdt[i++ % 3], asym});
  return cases;
}

TEST_F(CudaOps, LinearQuantizedSweep) {
  const int64_t max_m = 200;
  for (const QCase& c : quant_cases()) {
    QuantData q = make_quant(c, rng_);
    auto gw = gpu_->pack_quantized(q.view);
    auto cw = cpu_->pack_quantized(q.view);
    ASSERT_TRUE(gw.is_ok() && cw.is_ok()) << gw.status().message();
    EXPECT_EQ((*gw)->out, c.n);
    EXPECT_EQ((*gw)->in, c.k);
    std::vector<float> x = rnd(static_cast<size_t>(max_m * c.k)), b = rnd(static_cast<size_t>(c.n));
    DeviceTensor gx = up(x, {max_m, c.k}), gb = up(b, {c.n});
    std::vector<float> ref(static_cast<size_t>(max_m * c.n));
    TensorView hb = host(b, {c.n}), gbv = gb.view();
    cpu_->linear(host(ref, {max_m, c.n}), host(x, {max_m, c.k}), **cw, c.bias ? &hb : nullptr);
    // Auto path per M (tiled INT4 kernel up to 64 rows, else GEMV at 1, tensor
    // cores at 3 and 16, dequantize + cuBLAS above), then each path forced at sizes it would not get
    // by default.
    struct Run { int64_t m; int path; };
    for (Run run : {Run{1, 0}, Run{3, 0}, Run{16, 0}, Run{33, 0}, Run{64, 0}, Run{65, 0}, Run{128, 0}, Run{200, 0},
                    Run{16, 1}, Run{5, 2}, Run{1, 3}, Run{3, 3}, Run{40, 4}, Run{150, 4}}) {
      const int64_t m = run.m;
#ifdef NIBBLE_HAVE_CUDA
      const cuda::LinearPath paths[5] = {cuda::LinearPath::kAuto, cuda::LinearPath::kGemv, cuda::LinearPath::kMma,
                                         cuda::LinearPath::kDequantGemm, cuda::LinearPath::kTiled};
      static_cast<cuda::CudaBackend&>(*gpu_).set_linear_path(paths[run.path]);
#endif
      DeviceTensor out = ops::make_device_tensor(*gpu_, DType::kBF16, {m, c.n});
      TensorView xv = gx.view();
      xv.shape = {m, c.k};
      gpu_->linear(out.view(), xv, **gw, c.bias ? &gbv : nullptr);
#ifdef NIBBLE_HAVE_CUDA
      static_cast<cuda::CudaBackend&>(*gpu_).set_linear_path(cuda::LinearPath::kAuto);
#endif
      const std::vector<float> want(ref.begin(), ref.begin() + m * c.n);
      EXPECT_LT(rel_err(down(out.view()), want), kTol)
          << "INT" << c.bits << " [" << c.n << ", " << c.k << "] gs " << c.gs << " asym " << c.asym << " g_idx "
          << c.gidx << " scales " << dtype_name(c.scale_dtype) << " bias " << c.bias << " M " << m << " path " << run.path << SEED_INFO;
    }
  }
}

TEST_F(CudaOps, LinearRowStridedUnalignedViews) {
  // x is a column slice starting at column 3 of a wider buffer (unaligned), out a slice of a wider one.
  const QCase c{96, 256, 128, true, false, 4, DType::kBF16, false};
  QuantData q = make_quant(c, rng_);
  auto gw = gpu_->pack_quantized(q.view);
  auto cw = cpu_->pack_quantized(q.view);
  ASSERT_TRUE(gw.is_ok() && cw.is_ok());
  for (int64_t m : {1, 5, 40}) {
    const int64_t xw = c.k + 9, ow = c.n + 4;
    std::vector<float> xall = rnd(static_cast<size_t>(m * xw));
    DeviceTensor gx = up(xall, {m, xw});
    DeviceTensor gout = up(rnd(static_cast<size_t>(m * ow)), {m, ow});
    TensorView xv = gx.view(), ov = gout.view();
    xv.data = gx.buffer.as<uint16_t>() + 3;
    xv.shape = {m, c.k};
    xv.strides = {xw, 1};
    ov.data = gout.buffer.as<uint16_t>() + 2;
    ov.shape = {m, c.n};
    ov.strides = {ow, 1};
    gpu_->linear(ov, xv, **gw, nullptr);
    std::vector<float> ref(static_cast<size_t>(m * c.n));
    TensorView hx = host(xall, {m, c.k});
    hx.data = xall.data() + 3;
    hx.strides = {xw, 1};
    cpu_->linear(host(ref, {m, c.n}), hx, **cw, nullptr);
    EXPECT_LT(rel_err(down(ov), ref), kTol) << "M " << m << SEED_INFO;
  }
}

TEST_F(CudaOps, LinearDense) {
  for (DType wdt : {DType::kBF16, DType::kF16, DType::kF32}) {
    for (auto [n, k] : {std::pair<int64_t, int64_t>{64, 128}, {37, 301}}) {
      std::vector<float> wf = rnd(static_cast<size_t>(n * k), 0.2f);
      HostTensor wt(wdt, {n, k});
      for (size_t i = 0; i < wf.size(); ++i) {
        if (wdt == DType::kBF16) wt.as<uint16_t>()[i] = float_to_bf16(wf[i]);
        if (wdt == DType::kF16) wt.as<uint16_t>()[i] = float_to_fp16(wf[i]);
        if (wdt == DType::kF32) wt.as<float>()[i] = wf[i];
      }
      auto gw = gpu_->pack_dense(wt.view());
      auto cw = cpu_->pack_dense(wt.view());
      ASSERT_TRUE(gw.is_ok() && cw.is_ok());
      std::vector<float> b = rnd(static_cast<size_t>(n));
      DeviceTensor gb = up(b, {n});
      TensorView hb = host(b, {n}), gbv = gb.view();
      for (int64_t m : {1, 3, 16, 33, 128}) {
        std::vector<float> x = rnd(static_cast<size_t>(m * k));
        DeviceTensor gx = up(x, {m, k});
        DeviceTensor out = ops::make_device_tensor(*gpu_, DType::kBF16, {m, n});
        const bool bias = m % 2 == 1;
        gpu_->linear(out.view(), gx.view(), **gw, bias ? &gbv : nullptr);
        std::vector<float> ref(static_cast<size_t>(m * n));
        cpu_->linear(host(ref, {m, n}), host(x, {m, k}), **cw, bias ? &hb : nullptr);
        EXPECT_LT(rel_err(down(out.view()), ref), kTol) << dtype_name(wdt) << " [" << n << ", " << k << "] M " << m << SEED_INFO;
      }
    }
  }
}

TEST_F(CudaOps, LinearF16Activations) {
#ifndef NIBBLE_HAVE_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  auto r = make_cuda_backend(0, DType::kF16);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  ops::Backend& g16 = **r;
  EXPECT_EQ(g16.activation_dtype(), DType::kF16);
  const QCase c{80, 320, 64, true, true, 4, DType::kF16, true};
  QuantData q = make_quant(c, rng_);
  auto gw = g16.pack_quantized(q.view);
  auto cw = cpu_->pack_quantized(q.view);
  ASSERT_TRUE(gw.is_ok() && cw.is_ok());
  for (int64_t m : {1, 7, 50}) {
    std::vector<float> x = rnd(static_cast<size_t>(m * c.k)), b = rnd(static_cast<size_t>(c.n));
    DeviceTensor gx = up(x, {m, c.k}, DType::kF16), gb = up(b, {c.n}, DType::kF16);
    DeviceTensor out = ops::make_device_tensor(*gpu_, DType::kF16, {m, c.n});
    gpu_->synchronize();  // the casts ran on the bf16 backend's stream
    TensorView gbv = gb.view(), hb = host(b, {c.n});
    g16.linear(out.view(), gx.view(), **gw, &gbv);
    g16.synchronize();
    std::vector<float> ref(static_cast<size_t>(m * c.n));
    cpu_->linear(host(ref, {m, c.n}), host(x, {m, c.k}), **cw, &hb);
    EXPECT_LT(rel_err(down(out.view()), ref), kTol) << "F16 M " << m << SEED_INFO;
  }
#endif
}

}  // namespace
}  // namespace nb::cuda_test
