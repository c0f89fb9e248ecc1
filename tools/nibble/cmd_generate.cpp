// nibble generate: generation from token ids, with adapters mixed in one batch.
#include <cstdio>

#include "tools/nibble/cli.h"
#include "tools/nibble/engine_args.h"

namespace nb::cli {
namespace {

const char* kUsage =
    "usage: nibble generate MODEL_DIR --prompt-ids 1,2,3 [--max-tokens N] [--temperature T] [--top-p P]\n"
    "                       [--top-k K] [--seed S] [--lora NAME=DIR ...] [--adapter NAME ...]\n"
    "\n"
    "Generates a continuation of the prompt. Each --adapter adds one row to the batch using that\n"
    "adapter ('base' = no adapter); all rows are generated together in one batch.\n\n"
    "options:\n"
    "  --prompt-ids LIST        comma-separated prompt token ids\n"
    "  --max-tokens N           tokens to generate per row (default 16)\n"
    "  --temperature T          0 = greedy (default 0)\n"
    "  --top-p P, --top-k K     nucleus / top-k sampling\n"
    "  --seed S                 sampling seed (default 0)\n"
    "  --adapter NAME           a row with this adapter (repeatable; default: one base row)\n"
    "  --stop-ids LIST          stop a row after it emits one of these ids\n";

int run(const std::vector<std::string>& argv) {
  auto parsed = Args::parse(argv, {"reference-kernels", "quiet"});
  if (!parsed.is_ok()) return fail("generate", parsed.status());
  Args& args = *parsed;
  std::vector<std::string> known = {"prompt-ids", "max-tokens", "temperature", "top-p", "top-k", "seed", "adapter", "stop-ids"};
  known.insert(known.end(), kEngineOptions.begin(), kEngineOptions.end());
  if (Status s = args.check_known(known); !s.is_ok()) return fail("generate", s);
  if (args.positional().size() != 1) return fail("generate", invalid_argument(std::string("expected one MODEL_DIR\n") + kUsage));
  if (!args.has("prompt-ids")) return fail("generate", invalid_argument("--prompt-ids is required"));
  auto ids = parse_int_list(args.get("prompt-ids"));
  if (!ids.is_ok()) return fail("generate", ids.status());
  engine::GenerationRequest base;
  base.prompt.assign(ids->begin(), ids->end());
  auto max_tokens = args.get_int("max-tokens", 16);
  auto temperature = args.get_double("temperature", 0);
  auto top_p = args.get_double("top-p", 1);
  auto top_k = args.get_int("top-k", 0);
  auto seed = args.get_int("seed", 0);
  for (const Status& s : {max_tokens.status(), temperature.status(), top_p.status(), top_k.status(), seed.status()})
    if (!s.is_ok() && s.code() != ErrorCode::kInternal) return fail("generate", s);
  if (!max_tokens.is_ok() || !temperature.is_ok() || !top_p.is_ok() || !top_k.is_ok() || !seed.is_ok())
    return fail("generate", invalid_argument("bad numeric option"));
  if (*temperature < 0) return fail("generate", invalid_argument("--temperature must be >= 0"));
  if (*top_p <= 0 || *top_p > 1) return fail("generate", invalid_argument("--top-p must be in (0, 1]"));
  base.max_tokens = static_cast<int>(*max_tokens);
  base.sampling.temperature = static_cast<float>(*temperature);
  base.sampling.top_p = static_cast<float>(*top_p);
  base.sampling.top_k = static_cast<int>(*top_k);
  base.sampling.seed = static_cast<uint64_t>(*seed);
  if (args.has("stop-ids")) {
    auto stop = parse_int_list(args.get("stop-ids"));
    if (!stop.is_ok()) return fail("generate", stop.status());
    base.stop_ids.assign(stop->begin(), stop->end());
  }
  auto opts = engine_options_from(args, args.positional()[0]);
  if (!opts.is_ok()) return fail("generate", opts.status());
  auto engine = engine::Engine::create(*opts);
  if (!engine.is_ok()) return fail("generate", engine.status());
  if (Status s = load_adapters_from(args, **engine); !s.is_ok()) return fail("generate", s);
  std::vector<engine::GenerationRequest> requests;
  std::vector<std::string> rows = args.get_all("adapter");
  if (rows.empty()) rows.push_back("base");
  for (const std::string& name : rows) {
    engine::GenerationRequest r = base;
    r.adapter = (name == "base" || name == "none") ? "" : name;
    requests.push_back(r);
  }
  engine::GenerationStats stats;
  auto results = (*engine)->generate(requests, {}, &stats);
  if (!results.is_ok()) return fail("generate", results.status());
  for (size_t i = 0; i < results->size(); ++i) {
    std::printf("[%s]", rows[i].c_str());
    for (int32_t t : (*results)[i].tokens) std::printf(" %d", t);
    std::printf("   (finish: %s)\n", (*results)[i].finish_reason.c_str());
  }
  double tps = stats.decode_seconds > 0 ? static_cast<double>(stats.generated_tokens - static_cast<int64_t>(requests.size())) / stats.decode_seconds : 0;
  std::fprintf(stderr, "prefill: %lld tokens in %.3f s; decode: %lld tokens in %.3f s (%.1f tokens/s)\n",
               static_cast<long long>(stats.prompt_tokens), stats.prefill_seconds,
               static_cast<long long>(stats.generated_tokens), stats.decode_seconds, tps);
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND(generate_cmd, "generate", "generate tokens (adapters mixed in one batch)",
                    std::string(kUsage) + kEngineOptionsHelp, run);

}  // namespace nb::cli
