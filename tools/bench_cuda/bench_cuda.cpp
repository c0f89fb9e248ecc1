// bench_cuda: the CUDA backend's kernel benchmarks (performance.md P1 and the bandwidth floor).
//   bench_cuda [--quick]
// 1. device-to-device copy bandwidth (cudaMemcpyAsync of 2 GiB; bytes read + written / time);
// 2. W4A16 linear (INT4, group 128, bf16 scales, symmetric) against cuBLAS bf16 (the same backend's
//    dense linear) on [N, K] = 4096x4096, 14336x4096, 4096x14336, 8192x8192 at M = 1 ... 512, for
//    M = 1 ... 1024, for the automatic path and for each forced path (tiled INT4 kernel, dequantize + cuBLAS).
// Timing: CUDA events around a loop over several weight copies (so weights come from HBM, not L2),
// 5 repetitions, median. Random non-zero weights and activations.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/cuda_internal.h"
#include "ops/device_buffer.h"

namespace {

using nb::DType;
using nb::cuda::LinearPath;

uint32_t lcg_state = 12345;
uint32_t lcg() { return lcg_state = lcg_state * 1664525u + 1013904223u; }

// Median over 5 runs of the mean time (microseconds) of one call of fn(i), i cycling over `copies`.
template <typename F>
double time_us(cudaStream_t s, int copies, F fn) {
  const int reps = std::max(20, copies * 4);
  for (int i = 0; i < copies; ++i) fn(i);  // warm-up
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> t;
  for (int r = 0; r < 5; ++r) {
    cudaEventRecord(a, s);
    for (int i = 0; i < reps; ++i) fn(i % copies);
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(1000.0 * ms / reps);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[2];
}

double copy_bandwidth(nb::cuda::CudaBackend& be) {
  const size_t bytes = size_t{2} << 30;
  nb::ops::DeviceBuffer src(be, bytes), dst(be, bytes);
  cudaMemsetAsync(src.data(), 0x5a, bytes, be.stream());
  const double us = time_us(be.stream(), 1, [&](int) {
    cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, be.stream());
  });
  return 2.0 * static_cast<double>(bytes) / (us * 1e-6) / 1e9;
}

struct Row {
  int64_t n, k, m;
  double w4_us, tiled_us, dq_us, bf16_us;
};

Row bench_shape(nb::cuda::CudaBackend& be, int64_t n, int64_t k, int64_t m, int qcopies, int dcopies,
                const std::vector<std::unique_ptr<nb::ops::PackedWeight>>& qw,
                const std::vector<std::unique_ptr<nb::ops::PackedWeight>>& dw) {
  std::vector<uint16_t> xh(static_cast<size_t>(m * k));
  for (auto& v : xh) v = nb::float_to_bf16(static_cast<float>(static_cast<int32_t>(lcg() >> 16) - 32768) / 32768.f);
  nb::ops::DeviceBuffer x(be, xh.size() * 2), out(be, static_cast<size_t>(m * n) * 2);
  be.upload(x.data(), xh.data(), xh.size() * 2);
  const nb::TensorView xv = x.view(DType::kBF16, {m, k}), ov = out.view(DType::kBF16, {m, n});
  auto run = [&](LinearPath p, const std::vector<std::unique_ptr<nb::ops::PackedWeight>>& w, int copies) {
    be.set_linear_path(p);
    const double us = time_us(be.stream(), copies, [&](int i) { be.linear(ov, xv, *w[static_cast<size_t>(i)], nullptr); });
    be.set_linear_path(LinearPath::kAuto);
    return us;
  };
  Row r{n, k, m, 0, 0, 0, 0};
  r.w4_us = run(LinearPath::kAuto, qw, qcopies);
  r.tiled_us = m <= 512 ? run(LinearPath::kTiled, qw, qcopies) : 0;
  r.dq_us = run(LinearPath::kDequantGemm, qw, qcopies);
  r.bf16_us = run(LinearPath::kAuto, dw, dcopies);
  return r;
}

int main_impl(bool quick) {
  auto made = nb::make_cuda_backend(0, DType::kBF16);
  if (!made.is_ok()) {
    std::fprintf(stderr, "bench_cuda: %s\n", made.status().message().c_str());
    return 1;
  }
  auto& be = static_cast<nb::cuda::CudaBackend&>(**made);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
  const double bw = copy_bandwidth(be);
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", bw);

  const std::vector<std::pair<int64_t, int64_t>> shapes = {{4096, 4096}, {14336, 4096}, {4096, 14336}, {8192, 8192}};
  std::vector<int64_t> ms = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
  if (quick) ms = {1, 16, 64, 256};
  std::vector<Row> rows;
  for (auto [n, k] : shapes) {
    // One random INT4 g128 weight, packed several times so the copies exceed L2 (>= 256 MB in all).
    const int64_t g = k / 128;
    std::vector<uint8_t> codes(static_cast<size_t>(n * k / 2));
    for (auto& c : codes) c = static_cast<uint8_t>(lcg() >> 24);
    std::vector<uint16_t> scales(static_cast<size_t>(n * g));
    for (auto& s : scales) s = nb::float_to_bf16(0.001f + static_cast<float>(lcg() >> 24) / 25600.f);
    nb::ops::QuantWeightView w;
    w.out = n; w.in = k; w.bits = 4; w.group_size = 128; w.num_groups = g;
    w.codes = codes.data(); w.scale_dtype = DType::kBF16; w.scales = scales.data();
    const size_t qbytes = codes.size() + scales.size() * 2, dbytes = static_cast<size_t>(n * k) * 2;
    const int qcopies = static_cast<int>(std::max<size_t>(2, (size_t{256} << 20) / qbytes + 1));
    const int dcopies = static_cast<int>(std::max<size_t>(2, (size_t{256} << 20) / dbytes + 1));
    std::vector<std::unique_ptr<nb::ops::PackedWeight>> qw, dw;
    for (int i = 0; i < qcopies; ++i) qw.push_back(std::move(*be.pack_quantized(w)));
    std::vector<uint16_t> dense(static_cast<size_t>(n * k));
    for (auto& v : dense) v = nb::float_to_bf16(static_cast<float>(static_cast<int32_t>(lcg() >> 16) - 32768) / 1e6f);
    const nb::TensorView dv{dense.data(), DType::kBF16, {n, k}, {}, nb::Device::kCpu};
    for (int i = 0; i < dcopies; ++i) dw.push_back(std::move(*be.pack_dense(dv)));
    for (int64_t m : ms) rows.push_back(bench_shape(be, n, k, m, qcopies, dcopies, qw, dw));
  }
  std::printf("\nW4A16 (INT4 g128, bf16) vs cuBLAS bf16 on %s; us per call (median of 5); ratio = cuBLAS / W4A16\n",
              prop.name);
  std::printf("| N x K | M | W4A16 auto us | tiled kernel us | dequant+cuBLAS us | cuBLAS bf16 us | ratio | W4 weight GB/s | %% of copy bw |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows) {
    const double wbytes = static_cast<double>(r.n * r.k) / 2 + static_cast<double>(r.n * (r.k / 128)) * 2;
    const double gbs = wbytes / (r.w4_us * 1e-6) / 1e9;
    std::printf("| %lldx%lld | %lld | %.1f | %s | %.1f | %.1f | %.2f | %.0f | %.0f%% |\n", static_cast<long long>(r.n),
                static_cast<long long>(r.k), static_cast<long long>(r.m), r.w4_us,
                r.tiled_us > 0 ? nb::strformat("%.1f", r.tiled_us).c_str() : "-", r.dq_us, r.bf16_us,
                r.bf16_us / r.w4_us, gbs, 100.0 * gbs / bw);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  return main_impl(quick);
}
