// nibble bench: decode and prefill speed with random weights at real model shapes.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "tools/nibble/bench_lora.h"
#include "tools/nibble/bench_serve.h"
#include "tools/nibble/cli.h"
#include "tools/nibble/engine_args.h"

namespace nb::cli {
namespace {

const char* kUsage =
    "usage: nibble bench [--shape NAME] [--device cpu|cuda] [--bits 4|8|16] [--group-size N]\n"
    "                    [--batch LIST] [--decode-tokens N] [--prefill-tokens N] [--loras LIST]\n"
    "                    [--adapter-load]\n"
    "\n"
    "Builds a model of a real shape with random weights (INT4 group 128 by default, bf16 lm_head) and\n"
    "reports prefill tokens/s, decode tokens/s per batch size and the memory bandwidth a decode step\n"
    "implies (Linear weight bytes per step / step time); with --loras / --adapter-load, multi-LoRA decode\n"
    "speed and adapter load time with rank-16 adapters on all seven projections.\n\n"
    "options:\n"
    "  --shape NAME             llama-3.2-1b (default), llama-3-8b, qwen2.5-32b, tiny\n"
    "  --bits N                 4 or 8 (quantized Linears), 16 (bf16 everywhere)\n"
    "  --group-size N           quantization group (default 128; -1 = channel)\n"
    "  --batch LIST             decode batch sizes (default 1,8)\n"
    "  --decode-tokens N        tokens generated per row (default 32)\n"
    "  --prefill-tokens N       prompt length for the prefill measurement (default 128)\n"
    "  --prefill-seqs N         also prefill N such prompts in one step (default 1: only the single prompt)\n";

// Hyper-parameters of the benchmark shapes (performance.md), as config.json text.
Result<std::string> shape_config(const std::string& name) {
  auto cfg = [](int hidden, int layers, int ffn, int heads, int kv, int vocab, bool tied) {
    return strformat("{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, "
                     "\"num_hidden_layers\": %d, \"intermediate_size\": %d, \"num_attention_heads\": %d, "
                     "\"num_key_value_heads\": %d, \"vocab_size\": %d, \"tie_word_embeddings\": %s, "
                     "\"rms_norm_eps\": 1e-5, \"rope_theta\": 500000.0, \"max_position_embeddings\": 8192, "
                     "\"hidden_act\": \"silu\"}",
                     hidden, layers, ffn, heads, kv, vocab, tied ? "true" : "false");
  };
  if (name == "llama-3.2-1b") return cfg(2048, 16, 8192, 32, 8, 128256, false);
  if (name == "llama-3-8b") return cfg(4096, 32, 14336, 32, 8, 128256, false);
  if (name == "qwen2.5-32b") return cfg(5120, 64, 27648, 40, 8, 152064, false);
  if (name == "tiny") return cfg(256, 2, 512, 4, 2, 1000, false);
  return invalid_argument(strformat("unknown --shape '%s' (llama-3.2-1b, llama-3-8b, qwen2.5-32b, tiny)", name.c_str()));
}

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Bandwidth of the backend's own copy op over 1 GiB (bytes read + written per second), the
// "measured" reference for the implied bandwidth of decode steps.
double copy_bandwidth_gbs(ops::Backend& b) {
  const int64_t n = int64_t{1} << 29;  // bf16 elements: 1 GiB
  ops::DeviceBuffer src(b, static_cast<size_t>(n) * 2), dst(b, static_cast<size_t>(n) * 2);
  const TensorView s = src.view(DType::kBF16, {1, n}), d = dst.view(DType::kBF16, {1, n});
  b.cast(d, s);  // warm-up (and first touch)
  b.synchronize();
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) {
    const double t0 = seconds_now();
    b.cast(d, s);
    b.synchronize();
    t.push_back(seconds_now() - t0);
  }
  std::sort(t.begin(), t.end());
  return 2.0 * static_cast<double>(n) * 2 / t[2] / 1e9;
}

std::vector<int32_t> random_ids(size_t n, int64_t vocab, std::mt19937& rng) {
  std::vector<int32_t> ids(n);
  for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return ids;
}

int run(const std::vector<std::string>& argv) {
  std::vector<std::string> flags = {"reference-kernels", "quiet", "no-cuda-graphs"};
  flags.insert(flags.end(), kLoraBenchFlags.begin(), kLoraBenchFlags.end());
  flags.insert(flags.end(), kServeBenchFlags.begin(), kServeBenchFlags.end());
  auto parsed = Args::parse(argv, flags);
  if (!parsed.is_ok()) return fail("bench", parsed.status());
  Args& args = *parsed;
  std::vector<std::string> known = {"shape", "bits", "group-size", "batch", "decode-tokens", "prefill-tokens",
                                    "prefill-seqs"};
  known.insert(known.end(), kEngineOptions.begin(), kEngineOptions.end());
  known.insert(known.end(), kLoraBenchOptions.begin(), kLoraBenchOptions.end());
  known.insert(known.end(), kServeBenchOptions.begin(), kServeBenchOptions.end());
  known.insert(known.end(), kServeBenchFlags.begin(), kServeBenchFlags.end());
  if (Status s = args.check_known(known); !s.is_ok()) return fail("bench", s);
  std::string shape = args.get("shape", "llama-3.2-1b");
  auto text = shape_config(shape);
  if (!text.is_ok()) return fail("bench", text.status());
  auto config = parse_model_config(*text, "bench shape " + shape);
  if (!config.is_ok()) return fail("bench", config.status());
  auto bits = args.get_int("bits", 4);
  auto group = args.get_int("group-size", 128);
  auto decode_tokens = args.get_int("decode-tokens", 32);
  auto prefill_tokens = args.get_int("prefill-tokens", 128);
  auto prefill_seqs = args.get_int("prefill-seqs", 1);
  auto batches = parse_int_list(args.get("batch", "1,8"));
  for (const Status& s : {bits.status(), group.status(), decode_tokens.status(), prefill_tokens.status(),
                          prefill_seqs.status(), batches.status()})
    if (!s.is_ok()) return fail("bench", s);
  if (*prefill_seqs < 1 || *prefill_seqs > 64) return fail("bench", invalid_argument("--prefill-seqs must be in [1, 64]"));
  if (*bits != 4 && *bits != 8 && *bits != 16) return fail("bench", invalid_argument("--bits must be 4, 8 or 16"));
  auto opts = engine_options_from(args, "");
  if (!opts.is_ok()) return fail("bench", opts.status());
  auto lora = lora_bench_options(args, *opts);
  if (!lora.is_ok()) return fail("bench", lora.status());
  engine::RandomWeights random;
  random.config = *config;
  random.weights.bits = *bits == 16 ? 0 : static_cast<int>(*bits);
  random.weights.group_size = *group;
  if (args.has("serve")) {
    auto sb = serve_bench_options(args, *prefill_tokens, *decode_tokens);
    if (!sb.is_ok()) return fail("bench", sb.status());
    Status s = run_serve_bench(*opts, random, *sb, shape);
    return s.is_ok() ? 0 : fail("bench", s);
  }
  int64_t max_batch = 1;
  for (int64_t b : *batches) max_batch = std::max(max_batch, b);
  opts->max_kv_tokens = std::max<int64_t>((*prefill_tokens + 16) * *prefill_seqs, max_batch * (*decode_tokens + 24));
  opts->max_model_len = static_cast<int>(std::max<int64_t>(*prefill_tokens, *decode_tokens + 16) + 16);
  std::fprintf(stderr, "bench: building %s with random weights...\n", shape.c_str());
  auto engine = engine::Engine::create_random(*opts, random);
  if (!engine.is_ok()) return fail("bench", engine.status());
  engine::Engine& e = **engine;
  std::mt19937 rng(7);
  const int64_t vocab = e.config().vocab_size;
  double gb = static_cast<double>(e.linear_weight_bytes()) / 1e9;
  {  // Start-up (P7): the first token right after the engine is ready.
    engine::GenerationRequest r;
    r.prompt = random_ids(4, vocab, rng);
    r.max_tokens = 1;
    const double t0 = seconds_now();
    auto first = e.generate({r});
    if (!first.is_ok()) return fail("bench", first.status());
    const double ft = seconds_now() - t0;
    const engine::StartupStats& su = e.startup();
    std::printf("start-up: engine ready in %.2f s: %.2f s making random weights on the host (stands in for reading a "
                "checkpoint), %.2f s uploading and converting them, %.2f s the rest; first token %.3f s later.\n"
                "cold start to first token without the weight reading: %.2f s\n",
                su.create_seconds, su.generate_seconds, su.convert_seconds,
                su.create_seconds - su.generate_seconds - su.convert_seconds, ft,
                su.create_seconds - su.generate_seconds + ft);
    if (su.weight_device_bytes > 0)
      std::printf("device memory: weights %.2f GiB (Linear weights %.2f GiB); KV cache %lld tokens = %.2f GiB\n",
                  su.weight_device_bytes / 1073741824.0, static_cast<double>(e.linear_weight_bytes()) / 1073741824.0,
                  static_cast<long long>(su.kv_tokens), su.kv_bytes / 1073741824.0);
  }
  const double copy_gbs = copy_bandwidth_gbs(e.backend());
  const bool cuda = opts->device == "cuda";
  std::printf("measured copy bandwidth (read + write, 1 GiB): %.0f GB/s%s\n\n", copy_gbs,
              cuda ? "; datasheet column: H100 SXM 3.35 TB/s" : "");
  std::printf("| shape | device | weights | Linear bytes/step | measurement | tokens/s | implied GB/s | %% of measured | %% of datasheet |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  std::string wdesc = *bits == 16 ? "bf16" : strformat("int%lld g%lld, bf16 lm_head", static_cast<long long>(*bits), static_cast<long long>(*group));
  // Prefill: one prompt, one token out.
  {
    engine::GenerationRequest r;
    r.prompt = random_ids(static_cast<size_t>(*prefill_tokens), vocab, rng);
    r.max_tokens = 1;
    engine::GenerationStats st;
    auto warm = e.generate({r});  // warm-up (page faults, thread start)
    if (!warm.is_ok()) return fail("bench", warm.status());
    auto out = e.generate({r}, {}, &st);
    if (!out.is_ok()) return fail("bench", out.status());
    std::printf("| %s | %s | %s | %.3f GB | prefill %lld tokens | %.1f | - | - | - |\n", shape.c_str(), opts->device.c_str(),
                wdesc.c_str(), gb, static_cast<long long>(*prefill_tokens), static_cast<double>(*prefill_tokens) / st.prefill_seconds);
  }
  if (*prefill_seqs > 1) {  // several prompts prefilled in one flat batch (how a server fills a step)
    std::vector<engine::Engine::StepInput> in;
    for (int64_t i = 0; i < *prefill_seqs; ++i)
      in.push_back({int64_t{1} << 40 | i, random_ids(static_cast<size_t>(*prefill_tokens), vocab, rng), "", false});
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      const double t0 = seconds_now();
      auto r = e.step(in);
      const double dt = seconds_now() - t0;
      for (const auto& x : in) e.release_sequence(x.seq);
      if (!r.is_ok()) return fail("bench", r.status());
      if (rep > 0) best = std::min(best, dt);  // rep 0 warms up
    }
    std::printf("| %s | %s | %s | %.3f GB | prefill %lld x %lld tokens in one step | %.1f | - | - | - |\n", shape.c_str(),
                opts->device.c_str(), wdesc.c_str(), gb, static_cast<long long>(*prefill_seqs),
                static_cast<long long>(*prefill_tokens), static_cast<double>(*prefill_seqs * *prefill_tokens) / best);
  }
  for (int64_t b : *batches) {
    std::vector<engine::GenerationRequest> reqs;
    for (int64_t i = 0; i < b; ++i) {
      engine::GenerationRequest r;
      r.prompt = random_ids(8, vocab, rng);
      r.max_tokens = static_cast<int>(*decode_tokens);
      reqs.push_back(r);
    }
    engine::GenerationStats st;
    auto out = e.generate(reqs, {}, &st);
    if (!out.is_ok()) return fail("bench", out.status());
    double steps = static_cast<double>(*decode_tokens - 1);
    double tps = steps * static_cast<double>(b) / st.decode_seconds;
    double gbs = gb * steps / st.decode_seconds;
    std::printf("| %s | %s | %s | %.3f GB | decode batch %lld | %.1f | %.1f | %.0f%% | %s |\n", shape.c_str(),
                opts->device.c_str(), wdesc.c_str(), gb, static_cast<long long>(b), tps, gbs, 100.0 * gbs / copy_gbs,
                cuda ? strformat("%.0f%%", 100.0 * gbs / 3350.0).c_str() : "-");
  }
  if (cuda && opts->cuda_graphs) {  // what recording decode steps as graphs is worth: batch 1 without it
    e.set_cuda_graphs(false);
    engine::GenerationRequest r;
    r.prompt = random_ids(8, vocab, rng);
    r.max_tokens = static_cast<int>(*decode_tokens);
    engine::GenerationStats st;
    auto out = e.generate({r}, {}, &st);
    e.set_cuda_graphs(true);
    if (!out.is_ok()) return fail("bench", out.status());
    const double steps = static_cast<double>(*decode_tokens - 1);
    std::printf("| %s | %s | %s | %.3f GB | decode batch 1, no CUDA graphs | %.1f | %.1f | %.0f%% | %.0f%% |\n",
                shape.c_str(), opts->device.c_str(), wdesc.c_str(), gb, steps / st.decode_seconds,
                gb * steps / st.decode_seconds, 100.0 * gb * steps / st.decode_seconds / copy_gbs,
                100.0 * gb * steps / st.decode_seconds / 3350.0);
  }
  if (Status s = run_lora_benches(e, *lora, {shape, opts->device, *batches, *decode_tokens}); !s.is_ok())
    return fail("bench", s);
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND(bench_cmd, "bench", "decode/prefill speed with random weights at real shapes",
                    std::string(kUsage) + kLoraBenchHelp + kServeBenchHelp + kEngineOptionsHelp, run);

}  // namespace nb::cli
