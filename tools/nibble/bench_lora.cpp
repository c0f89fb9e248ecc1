#include "tools/nibble/bench_lora.h"

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>

#include "core/dtype.h"
#include "core/mmap.h"
#include "io/safetensors.h"
#include "lora/adapter.h"

namespace nb::cli {

Result<TempDir> TempDir::create(const std::string& tag) {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/nibble-bench-" + tag + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) return io_error(strformat("cannot create a temporary directory %s", tmpl.c_str()));
  TempDir d;
  d.path_ = buf.data();
  return d;
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path_.empty()) std::filesystem::remove_all(path_, ec);
}

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The seven projections of a Llama-style decoder layer, [out, in] from the config.
struct Projection {
  const char* name;
  int64_t out, in;
};
std::vector<Projection> projections(const ModelConfig& c) {
  const int64_t hd = c.head_dim > 0 ? c.head_dim : c.hidden_size / c.num_attention_heads;
  const int64_t h = c.hidden_size, q = c.num_attention_heads * hd, kv = c.num_key_value_heads * hd,
                i = c.intermediate_size;
  return {{"self_attn.q_proj", q, h},  {"self_attn.k_proj", kv, h}, {"self_attn.v_proj", kv, h},
          {"self_attn.o_proj", h, q},  {"mlp.gate_proj", i, h},     {"mlp.up_proj", i, h},
          {"mlp.down_proj", h, i}};
}

}  // namespace

Result<uint64_t> write_dummy_adapter(const std::string& dir, const ModelConfig& c, int rank, uint64_t seed) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return io_error(strformat("%s: cannot create directory: %s", dir.c_str(), ec.message().c_str()));
  NB_RETURN_IF_ERROR(write_text_file(
      path_join(dir, kAdapterConfigFile),
      strformat("{\"peft_type\": \"LORA\", \"base_model_name_or_path\": \"nibble-bench-dummy\", \"r\": %d, "
                "\"lora_alpha\": %d, \"lora_dropout\": 0.0, \"bias\": \"none\", \"task_type\": \"CAUSAL_LM\", "
                "\"target_modules\": [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", "
                "\"down_proj\"]}\n",
                rank, 2 * rank)));
  std::mt19937_64 rng(seed);
  std::vector<uint16_t> values;
  auto fill = [&](int64_t n) {
    values.resize(static_cast<size_t>(n));
    for (uint16_t& v : values) {
      const uint64_t r = rng();
      const float mag = 0.002f + 0.018f * static_cast<float>(r >> 40) / static_cast<float>(1u << 24);
      v = float_to_bf16((r & 1) ? mag : -mag);
    }
    return values.data();
  };
  const std::string file = path_join(dir, kAdapterWeightsFile);
  SafetensorsWriter w(file);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    for (const Projection& p : projections(c)) {
      const std::string key = strformat("base_model.model.model.layers.%lld.%s", static_cast<long long>(l), p.name);
      NB_RETURN_IF_ERROR(w.add(key + ".lora_A.weight", DType::kBF16, {rank, p.in}, fill(rank * p.in)));
      NB_RETURN_IF_ERROR(w.add(key + ".lora_B.weight", DType::kBF16, {p.out, rank}, fill(p.out * rank)));
    }
  }
  NB_RETURN_IF_ERROR(w.finish({{"format", "pt"}}));
  const uint64_t bytes = std::filesystem::file_size(file, ec);
  if (ec) return io_error(strformat("%s: %s", file.c_str(), ec.message().c_str()));
  return bytes;
}

namespace {

// Decode tokens/s of `batch` rows, row i using adapters[i % size] (none when empty).
Result<double> decode_tokens_per_second(engine::Engine& e, int64_t batch, int64_t decode_tokens,
                                        const std::vector<std::string>& adapters, std::mt19937& rng) {
  std::vector<engine::GenerationRequest> reqs(static_cast<size_t>(batch));
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].prompt.resize(8);
    for (int32_t& id : reqs[i].prompt) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(e.config().vocab_size));
    reqs[i].adapter = adapters.empty() ? "" : adapters[i % adapters.size()];
    reqs[i].max_tokens = 2;
  }
  NB_RETURN_IF_ERROR(e.generate(reqs).status());  // warm-up: workspaces, slot installs
  for (auto& r : reqs) r.max_tokens = static_cast<int>(decode_tokens);
  engine::GenerationStats st;
  NB_RETURN_IF_ERROR(e.generate(reqs, {}, &st).status());
  return static_cast<double>(decode_tokens - 1) * static_cast<double>(batch) / st.decode_seconds;
}

// P5: one table, per batch size: no LoRA, adapters loaded with base-only rows, then each count.
Status bench_multi_lora(engine::Engine& e, const LoraBenchOptions& o, const DecodeBenchSetup& s) {
  if (s.decode_tokens < 2) return invalid_argument("--loras needs --decode-tokens of at least 2");
  std::mt19937 rng(11);
  const int64_t max_count = *std::max_element(o.counts.begin(), o.counts.end());
  struct Row {
    int64_t batch;
    std::string what;
    double tps, base;
  };
  std::vector<Row> rows;
  std::vector<double> base(s.batches.size());
  for (size_t b = 0; b < s.batches.size(); ++b) {
    NB_ASSIGN_OR_RETURN(base[b], decode_tokens_per_second(e, s.batches[b], s.decode_tokens, {}, rng));
    rows.push_back({s.batches[b], "off", base[b], base[b]});
  }
  std::vector<std::string> names;
  NB_ASSIGN_OR_RETURN(TempDir tmp, TempDir::create("loras"));
  if (max_count > 0) {
    std::fprintf(stderr, "bench: writing and loading %lld rank-%d adapters...\n", static_cast<long long>(max_count),
                 o.rank);
    for (int64_t i = 0; i < max_count; ++i) {
      const std::string dir = path_join(tmp.path(), strformat("lora%lld", static_cast<long long>(i)));
      NB_RETURN_IF_ERROR(write_dummy_adapter(dir, e.config(), o.rank, 1000 + static_cast<uint64_t>(i)).status());
      names.push_back(strformat("bench-lora-%lld", static_cast<long long>(i)));
      NB_RETURN_IF_ERROR(e.load_adapter(names.back(), dir));
    }
    for (size_t b = 0; b < s.batches.size(); ++b) {
      NB_ASSIGN_OR_RETURN(double tps, decode_tokens_per_second(e, s.batches[b], s.decode_tokens, {}, rng));
      rows.push_back({s.batches[b], strformat("%lld loaded, base-only rows", static_cast<long long>(max_count)), tps,
                      base[b]});
    }
  }
  for (int64_t count : o.counts) {
    if (count == 0) continue;
    const std::vector<std::string> use(names.begin(), names.begin() + count);
    for (size_t b = 0; b < s.batches.size(); ++b) {
      NB_ASSIGN_OR_RETURN(double tps, decode_tokens_per_second(e, s.batches[b], s.decode_tokens, use, rng));
      std::string what = strformat("%lld adapter%s, rank %d", static_cast<long long>(count), count == 1 ? "" : "s", o.rank);
      if (s.batches[b] < count) what += strformat(" (%lld used: one per row)", static_cast<long long>(s.batches[b]));
      rows.push_back({s.batches[b], what, tps, base[b]});
    }
  }
  for (const std::string& n : names) NB_RETURN_IF_ERROR(e.unload_adapter(n));
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.batch < b.batch; });
  std::printf("\n| shape | device | batch | LoRA (all 7 projections, rows round-robin) | decode tokens/s | vs no LoRA |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const Row& r : rows)
    std::printf("| %s | %s | %lld | %s | %.1f | %.1f%% |\n", s.shape.c_str(), s.device.c_str(),
                static_cast<long long>(r.batch), r.what.c_str(), r.tps, 100.0 * r.tps / r.base);
  return Status::ok();
}

// P8: load_adapter until usable (in a device slot, device synchronized), median of 5.
Status bench_adapter_load(engine::Engine& e, const LoraBenchOptions& o, const DecodeBenchSetup& s) {
  NB_ASSIGN_OR_RETURN(TempDir tmp, TempDir::create("adapter-load"));
  const std::string dir = path_join(tmp.path(), "adapter");
  NB_ASSIGN_OR_RETURN(uint64_t bytes, write_dummy_adapter(dir, e.config(), o.rank, 42));
  {  // into the page cache
    NB_ASSIGN_OR_RETURN(MappedFile f, MappedFile::open(path_join(dir, kAdapterWeightsFile)));
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < f.size(); i += 4096) sink = sink + f.data()[i];
  }
  const std::string name = "bench-adapter-load";
  auto load_once = [&](double* seconds) -> Status {
    const double t0 = now_seconds();
    NB_RETURN_IF_ERROR(e.load_adapter(name, dir));
    {
      NB_ASSIGN_OR_RETURN(engine::AdapterSlots held, e.acquire_adapter_slots({name}));  // installed
    }
    e.backend().synchronize();
    *seconds = now_seconds() - t0;
    return e.unload_adapter(name);
  };
  double warm = 0;
  NB_RETURN_IF_ERROR(load_once(&warm));  // warm-up (allocator, first touch)
  std::vector<double> ms;
  for (int i = 0; i < 5; ++i) {
    double t = 0;
    NB_RETURN_IF_ERROR(load_once(&t));
    ms.push_back(t * 1e3);
  }
  std::sort(ms.begin(), ms.end());
  std::printf("\n| shape | device | adapter | safetensors | load + slot install, median of 5 | min | max |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  std::printf("| %s | %s | rank %d, all 7 projections, bf16 | %.1f MB | %.1f ms | %.1f ms | %.1f ms |\n",
              s.shape.c_str(), s.device.c_str(), o.rank, static_cast<double>(bytes) / 1e6, ms[2], ms.front(),
              ms.back());
  return Status::ok();
}

}  // namespace

Result<LoraBenchOptions> lora_bench_options(const Args& args, engine::EngineOptions& options) {
  LoraBenchOptions o;
  o.adapter_load = args.has("adapter-load");
  if (args.has("loras")) {
    NB_ASSIGN_OR_RETURN(o.counts, parse_int_list(args.get("loras")));
    if (o.counts.empty()) return invalid_argument("--loras expects a list such as 0,1,8");
    for (int64_t c : o.counts)
      if (c < 0 || c > 1024) return invalid_argument(strformat("--loras: %lld is not in [0, 1024]", static_cast<long long>(c)));
    const int64_t max_count = *std::max_element(o.counts.begin(), o.counts.end());
    options.max_loras = std::max<int>(options.max_loras, static_cast<int>(max_count));
    if (options.max_cpu_loras > 0) options.max_cpu_loras = std::max(options.max_cpu_loras, options.max_loras);
  }
  return o;
}

Status run_lora_benches(engine::Engine& engine, const LoraBenchOptions& lora, const DecodeBenchSetup& setup) {
  if (!lora.counts.empty()) NB_RETURN_IF_ERROR(bench_multi_lora(engine, lora, setup));
  if (lora.adapter_load) NB_RETURN_IF_ERROR(bench_adapter_load(engine, lora, setup));
  return Status::ok();
}

}  // namespace nb::cli
