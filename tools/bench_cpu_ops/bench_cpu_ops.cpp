// Micro-benchmark of the fast CPU linear kernels on Llama-3.2-1B shapes (hidden 2048, ffn 8192,
// 32/8 heads of dim 64, vocab 128256): INT4 group-128 weights with BF16 (or F16) scales, and the
// untied BF16 lm_head. Weights are random; 16 layers are packed so that every timed GEMV streams
// its weight from memory as decoding does (nothing fits the last-level cache twice).
//
//   bench_cpu_ops [--scales bf16|f16] [--seconds S]      (threads: NIBBLE_THREADS, default all cores)
//
// Prints per shape and M (best of the rounds run within --seconds): ms per call, GB/s of packed weight bytes, GFLOP/s (2*M*N*K), then the time
// of one forward pass (decode M=1 at context 512, prefill M=128): all linears, the lm_head and the
// other ops, as tokens per second.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "core/thread_pool.h"

namespace {

using nb::DType;
using nb::TensorView;

constexpr int kLayers = 16;
constexpr int64_t kHidden = 2048, kFfn = 8192, kKv = 512, kVocab = 128256, kGroup = 128;

uint64_t g_state = 0x9E3779B97F4A7C15ull;
uint64_t next_random() {  // xorshift64*: fast enough for a gigabyte of weights
  g_state ^= g_state >> 12;
  g_state ^= g_state << 25;
  g_state ^= g_state >> 27;
  return g_state * 2685821657736338717ull;
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

std::unique_ptr<nb::ops::PackedWeight> make_int4(nb::ops::Backend& b, int64_t out, int64_t in, DType sdt) {
  std::vector<uint8_t> codes(static_cast<size_t>(out * in / 2));
  for (size_t i = 0; i < codes.size(); i += 8) {
    const uint64_t r = next_random();
    std::memcpy(codes.data() + i, &r, std::min<size_t>(8, codes.size() - i));
  }
  const int64_t groups = in / kGroup;
  std::vector<uint16_t> scales(static_cast<size_t>(out * groups));
  for (auto& s : scales) {
    const float v = 0.001f + 0.01f * static_cast<float>(next_random() % 1000) / 1000.f;
    s = sdt == DType::kBF16 ? nb::float_to_bf16(v) : nb::float_to_fp16(v);
  }
  nb::ops::QuantWeightView v;
  v.out = out;
  v.in = in;
  v.bits = 4;
  v.group_size = kGroup;
  v.num_groups = groups;
  v.codes = codes.data();
  v.scale_dtype = sdt;
  v.scales = scales.data();
  auto w = b.pack_quantized(v);
  if (!w.is_ok()) {
    std::fprintf(stderr, "pack failed: %s\n", w.status().to_string().c_str());
    std::exit(1);
  }
  return std::move(w).value();
}

std::unique_ptr<nb::ops::PackedWeight> make_bf16(nb::ops::Backend& b, int64_t out, int64_t in) {
  std::vector<uint16_t> data(static_cast<size_t>(out * in));
  for (auto& d : data) d = nb::float_to_bf16(static_cast<float>(static_cast<int64_t>(next_random() % 2001) - 1000) * 1e-5f);
  auto w = b.pack_dense(TensorView{data.data(), DType::kBF16, {out, in}, {}, nb::Device::kCpu});
  if (!w.is_ok()) std::exit(1);
  return std::move(w).value();
}

struct Layer {
  std::unique_ptr<nb::ops::PackedWeight> q, k, v, o, gate, up, down;
  std::vector<const nb::ops::PackedWeight*> all() const { return {q.get(), k.get(), v.get(), o.get(), gate.get(), up.get(), down.get()}; }
};

// Runs linear over `weights` in turn (M rows), round after round until `seconds` have passed; seconds
// per call of the fastest round (the machine may be shared: the minimum is the kernel's own speed).
double time_calls(nb::ops::Backend& b, const std::vector<const nb::ops::PackedWeight*>& weights, int64_t m, double seconds) {
  int64_t max_in = 0, max_out = 0;
  for (auto* w : weights) max_in = std::max(max_in, w->in), max_out = std::max(max_out, w->out);
  std::vector<float> x(static_cast<size_t>(m * max_in)), out(static_cast<size_t>(m * max_out));
  for (auto& v : x) v = static_cast<float>(static_cast<int64_t>(next_random() % 2001) - 1000) * 1e-3f;
  auto run_all = [&] {
    for (auto* w : weights) {
      TensorView xv{x.data(), DType::kF32, {m, w->in}, {}, nb::Device::kCpu};
      TensorView ov{out.data(), DType::kF32, {m, w->out}, {}, nb::Device::kCpu};
      b.linear(ov, xv, *w, nullptr);
    }
  };
  run_all();  // warm-up
  double best = 1e30;
  const double t0 = now();
  do {
    const double r0 = now();
    run_all();
    best = std::min(best, now() - r0);
  } while (now() - t0 < seconds);
  return best / static_cast<double>(weights.size());
}

// Streaming read bandwidth with the same threads (best of a few passes over 512 MiB): the ceiling
// for the M=1 rows, printed so that their GB/s can be judged on a shared or noisy machine.
double read_bandwidth() {
  const size_t n = size_t{512} << 20;
  std::vector<uint64_t> buf(n / 8, 1);
  double best = 1e30;
  std::vector<uint64_t> sums(64);
  for (int pass = 0; pass < 5; ++pass) {
    const double t0 = now();
    nb::ThreadPool::global().parallel_for(64, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        const uint64_t* p = buf.data() + static_cast<size_t>(c) * (buf.size() / 64);
        for (size_t i = 0; i < buf.size() / 64; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
        sums[static_cast<size_t>(c)] = s0 + s1 + s2 + s3;
      }
    });
    best = std::min(best, now() - t0);
  }
  return static_cast<double>(n) / best / 1e9 + 0 * static_cast<double>(sums[0]);
}

// Everything but the linears in one forward pass of `m` new tokens of one sequence whose context
// ends at `ctx`: per layer 2 RMSNorms, RoPE on q and k, kv_store, paged attention (GQA 32/8, d 64,
// blocks of 16), SiLU-gate, 2 residual adds; then the final norm and greedy sampling of one row.
double time_other_ops(nb::ops::Backend& b, int64_t m, int64_t ctx, double seconds) {
  constexpr int kHeads = 32, kKvHeads = 8, kDim = 64, kBlock = 16;
  const int64_t blocks = (ctx + kBlock - 1) / kBlock;
  auto f32 = [](std::vector<float>& v, nb::Shape shape) { return TensorView{v.data(), DType::kF32, std::move(shape), {}, nb::Device::kCpu}; };
  std::vector<float> h(static_cast<size_t>(m * kHidden), 0.5f), x(h.size()), normw(static_cast<size_t>(kHidden), 1.f);
  std::vector<float> q(static_cast<size_t>(m * kHeads * kDim), 0.1f), k(static_cast<size_t>(m * kKvHeads * kDim), 0.1f), v(k.size(), 0.1f);
  std::vector<float> attn(q.size()), gate(static_cast<size_t>(m * kFfn), 0.3f), up(gate.size(), 0.2f);
  std::vector<float> logits(static_cast<size_t>(kVocab), 0.f), inv_freq(kDim / 2);
  for (int i = 0; i < kDim / 2; ++i) inv_freq[static_cast<size_t>(i)] = std::pow(500000.f, -2.f * static_cast<float>(i) / kDim);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(next_random() % 10000) * 1e-3f;
  std::vector<std::vector<float>> kc(kLayers), vc(kLayers);
  for (int l = 0; l < kLayers; ++l) {
    kc[static_cast<size_t>(l)].assign(static_cast<size_t>(blocks * kBlock * kKvHeads * kDim), 0.01f);
    vc[static_cast<size_t>(l)].assign(kc[static_cast<size_t>(l)].size(), 0.01f);
  }
  std::vector<int32_t> pos(static_cast<size_t>(m)), slots(static_cast<size_t>(m)), table(static_cast<size_t>(blocks));
  for (int64_t i = 0; i < m; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(ctx - m + i), slots[static_cast<size_t>(i)] = pos[static_cast<size_t>(i)];
  for (int64_t i = 0; i < blocks; ++i) table[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  std::vector<int32_t> qstart{0, static_cast<int32_t>(m)}, ctx_lens{static_cast<int32_t>(ctx)};
  nb::ops::AttentionArgs a;
  a.num_seqs = 1, a.query_start = qstart.data(), a.context_lens = ctx_lens.data(), a.block_tables = table.data();
  a.max_blocks_per_seq = static_cast<int>(blocks), a.block_size = kBlock, a.num_heads = kHeads, a.num_kv_heads = kKvHeads;
  a.head_dim = kDim, a.v_head_dim = kDim, a.scale = 0.125f;
  nb::ops::RopeArgs rope;
  rope.inv_freq = inv_freq.data(), rope.rotary_dim = kDim;
  auto run = [&] {
    for (int l = 0; l < kLayers; ++l) {
      TensorView kcv = f32(kc[static_cast<size_t>(l)], {blocks * kBlock, kKvHeads, kDim}), vcv = f32(vc[static_cast<size_t>(l)], {blocks * kBlock, kKvHeads, kDim});
      b.rms_norm(f32(x, {m, kHidden}), f32(h, {m, kHidden}), f32(normw, {kHidden}), 1e-5f);
      b.rope(f32(q, {m, kHeads, kDim}), pos.data(), rope);
      b.rope(f32(k, {m, kKvHeads, kDim}), pos.data(), rope);
      b.kv_store(kcv, vcv, f32(k, {m, kKvHeads, kDim}), f32(v, {m, kKvHeads, kDim}), slots.data());
      b.attention(f32(attn, {m, kHeads, kDim}), f32(q, {m, kHeads, kDim}), kcv, vcv, a);
      b.add(f32(h, {m, kHidden}), f32(h, {m, kHidden}), f32(x, {m, kHidden}));
      b.rms_norm(f32(x, {m, kHidden}), f32(h, {m, kHidden}), f32(normw, {kHidden}), 1e-5f);
      b.silu_mul(f32(gate, {m, kFfn}), f32(gate, {m, kFfn}), f32(up, {m, kFfn}));
      b.add(f32(h, {m, kHidden}), f32(h, {m, kHidden}), f32(x, {m, kHidden}));
    }
    b.rms_norm(f32(x, {1, kHidden}), f32(h, {1, kHidden}), f32(normw, {kHidden}), 1e-5f);
    int32_t id = 0;
    b.sample(&id, f32(logits, {1, kVocab}), {nb::ops::SamplingParams{}}, 0);
  };
  run();
  double best = 1e30;
  const double t0 = now();
  do {
    const double r0 = now();
    run();
    best = std::min(best, now() - r0);
  } while (now() - t0 < seconds);
  return best;
}

void report(const char* name, const nb::ops::PackedWeight& w, int64_t m, double sec) {
  const double flops = 2.0 * static_cast<double>(m * w.out * w.in);
  std::printf("%-22s M=%-4lld %9.3f ms  %7.1f GB/s  %7.1f GFLOP/s\n", name, static_cast<long long>(m), sec * 1e3,
              static_cast<double>(w.device_bytes) / sec / 1e9, flops / sec / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  DType sdt = DType::kBF16;
  double seconds = 1.0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--scales" && i + 1 < argc) {
      sdt = std::string(argv[++i]) == "f16" ? DType::kF16 : DType::kBF16;
    } else if (a == "--seconds" && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: bench_cpu_ops [--scales bf16|f16] [--seconds S]\n");
      return 2;
    }
  }
  auto backend = nb::make_cpu_backend(false);
  std::printf("memory read bandwidth (same threads): %.1f GB/s\n", read_bandwidth());
  std::printf("threads %d, INT4 g%lld %s scales; packing %d layers + lm_head...\n", nb::ThreadPool::global().size(),
              static_cast<long long>(kGroup), nb::dtype_name(sdt), kLayers);
  std::vector<Layer> layers(kLayers);
  const double pack_t0 = now();
  double pack_sec = 0;
  for (auto& l : layers) {
    l.q = make_int4(*backend, kHidden, kHidden, sdt);
    l.k = make_int4(*backend, kKv, kHidden, sdt);
    l.v = make_int4(*backend, kKv, kHidden, sdt);
    l.o = make_int4(*backend, kHidden, kHidden, sdt);
    l.gate = make_int4(*backend, kFfn, kHidden, sdt);
    l.up = make_int4(*backend, kFfn, kHidden, sdt);
    l.down = make_int4(*backend, kHidden, kFfn, sdt);
  }
  pack_sec = now() - pack_t0;  // includes generating the random canonical weights
  auto lm_head = make_bf16(*backend, kVocab, kHidden);
  std::printf("generated and packed %d layers (%.0f M INT4 weights) in %.1f s\n", kLayers,
              static_cast<double>(kLayers) * (2 * kHidden * kHidden + 2 * kKv * kHidden + 3 * kFfn * kHidden) / 1e6, pack_sec);

  std::vector<const nb::ops::PackedWeight*> sq, sgate, sdown, model;
  for (auto& l : layers) {
    sq.push_back(l.q.get());
    sgate.push_back(l.gate.get());
    sdown.push_back(l.down.get());
    for (auto* w : l.all()) model.push_back(w);
  }
  for (int64_t m : {1, 8, 128}) {
    report("int4 2048x2048", *sq[0], m, time_calls(*backend, sq, m, seconds));
    report("int4 8192x2048", *sgate[0], m, time_calls(*backend, sgate, m, seconds));
    report("int4 2048x8192", *sdown[0], m, time_calls(*backend, sdown, m, seconds));
    report("bf16 lm_head 128256x2048", *lm_head, m, time_calls(*backend, {lm_head.get()}, m, m == 128 ? 0 : seconds));
  }
  // One forward pass: 16 layers x 7 projections + lm_head (logits for the last row only), and the
  // other ops (decode at context 512; prefill of 128 tokens).
  for (int64_t m : {1, 128}) {
    const double layer_sec = time_calls(*backend, model, m, seconds) * static_cast<double>(model.size());
    const double head_sec = time_calls(*backend, {lm_head.get()}, 1, seconds);
    const double other_sec = time_other_ops(*backend, m, m == 1 ? 512 : 128, seconds);
    const double total = layer_sec + head_sec + other_sec;
    std::printf("forward M=%-4lld %8.1f ms (linears %.1f + lm_head %.1f + other ops %.1f)  -> %.1f tok/s\n",
                static_cast<long long>(m), total * 1e3, layer_sec * 1e3, head_sec * 1e3, other_sec * 1e3,
                static_cast<double>(m) / total);
  }
  return 0;
}
