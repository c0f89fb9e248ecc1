// nibble generate: generation from text, a chat message or token ids, with adapters mixed in one
// batch. One row streams its text as it is generated; several rows print side by side at the end.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/mmap.h"
#include "io/chat_template/chat_template.h"
#include "io/tokenizer/tokenizer.h"
#include "tools/nibble/cli.h"
#include "tools/nibble/engine_args.h"

namespace nb::cli {
namespace {

const char* kUsage =
    "usage: nibble generate MODEL_DIR (--prompt TEXT | --chat TEXT | --prompt-ids 1,2,3)\n"
    "                       [--system TEXT] [--chat-template FILE] [--max-tokens N] [--temperature T]\n"
    "                       [--top-p P] [--top-k K] [--seed S] [--lora NAME=DIR ...] [--adapter NAME ...]\n"
    "\n"
    "Generates a continuation. Each --adapter adds one row to the batch using that adapter ('base' =\n"
    "no adapter); all rows are generated together in one batch. A single row streams its text as it\n"
    "is generated; several rows are printed one after the other at the end.\n\n"
    "options:\n"
    "  --prompt TEXT            plain text prompt (tokenized with the model's tokenizer.json)\n"
    "  --chat TEXT              a user message rendered through the model's chat template\n"
    "  --system TEXT            a system message before it (with --chat)\n"
    "  --chat-template FILE     use this Jinja template instead of the model's\n"
    "  --prompt-ids LIST        comma-separated prompt token ids (no tokenizer needed)\n"
    "  --max-tokens N           tokens to generate per row (default 64)\n"
    "  --temperature T          0 = greedy (default 0)\n"
    "  --top-p P, --top-k K     nucleus / top-k sampling\n"
    "  --seed S                 sampling seed (default 0)\n"
    "  --adapter NAME           a row with this adapter (repeatable; default: one base row)\n"
    "  --stop-ids LIST          stop a row after one of these ids (default: the tokenizer's EOS ids)\n"
    "  --ignore-eos             do not stop at EOS\n"
    "  --show-ids               print token ids too\n";

struct Prompt {
  std::vector<int32_t> ids;
  std::optional<Tokenizer> tokenizer;
};

Result<Prompt> build_prompt(const Args& args, const std::string& model_dir) {
  Prompt p;
  int given = args.has("prompt") + args.has("chat") + args.has("prompt-ids");
  if (given != 1) return invalid_argument("give exactly one of --prompt, --chat, --prompt-ids");
  bool have_tokenizer = file_exists(path_join(model_dir, "tokenizer.json"));
  if (have_tokenizer) {
    NB_ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::load(model_dir));
    p.tokenizer = std::move(t);
  }
  if (args.has("prompt-ids")) {
    NB_ASSIGN_OR_RETURN(auto ids, parse_int_list(args.get("prompt-ids")));
    p.ids.assign(ids.begin(), ids.end());
    return p;
  }
  if (!p.tokenizer)
    return not_found(strformat("%s has no tokenizer.json: use --prompt-ids", model_dir.c_str()));
  if (args.has("prompt")) {
    NB_ASSIGN_OR_RETURN(p.ids, p.tokenizer->encode(args.get("prompt"), true, true));
    return p;
  }
  NB_ASSIGN_OR_RETURN(ChatTemplate tmpl, load_chat_template(model_dir, args.get("chat-template")));
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  if (args.has("system")) messages.push_back({{"role", "system"}, {"content", args.get("system")}});
  messages.push_back({{"role", "user"}, {"content", args.get("chat")}});
  NB_ASSIGN_OR_RETURN(std::string text, tmpl.render_chat(messages, nullptr, true));
  // The template writes BOS itself, as transformers' apply_chat_template(tokenize=True) assumes.
  NB_ASSIGN_OR_RETURN(p.ids, p.tokenizer->encode(text, false, true));
  return p;
}

Status read_sampling(const Args& args, engine::GenerationRequest* r) {
  NB_ASSIGN_OR_RETURN(int64_t max_tokens, args.get_int("max-tokens", 64));
  NB_ASSIGN_OR_RETURN(double temperature, args.get_double("temperature", 0));
  NB_ASSIGN_OR_RETURN(double top_p, args.get_double("top-p", 1));
  NB_ASSIGN_OR_RETURN(int64_t top_k, args.get_int("top-k", 0));
  NB_ASSIGN_OR_RETURN(int64_t seed, args.get_int("seed", 0));
  if (max_tokens < 0) return invalid_argument("--max-tokens must be >= 0");
  if (temperature < 0) return invalid_argument("--temperature must be >= 0");
  if (top_p <= 0 || top_p > 1) return invalid_argument("--top-p must be in (0, 1]");
  if (top_k < 0) return invalid_argument("--top-k must be >= 0");
  r->max_tokens = static_cast<int>(max_tokens);
  r->sampling.temperature = static_cast<float>(temperature);
  r->sampling.top_p = static_cast<float>(top_p);
  r->sampling.top_k = static_cast<int>(top_k);
  r->sampling.seed = static_cast<uint64_t>(seed);
  return Status::ok();
}

int run(const std::vector<std::string>& argv) {
  auto parsed = Args::parse(argv, {"reference-kernels", "quiet", "no-cuda-graphs", "ignore-eos", "show-ids"});
  if (!parsed.is_ok()) return fail("generate", parsed.status());
  Args& args = *parsed;
  std::vector<std::string> known = {"prompt", "chat", "system", "chat-template", "prompt-ids", "max-tokens",
                                    "temperature", "top-p", "top-k", "seed", "adapter", "stop-ids", "ignore-eos",
                                    "show-ids"};
  known.insert(known.end(), kEngineOptions.begin(), kEngineOptions.end());
  if (Status s = args.check_known(known); !s.is_ok()) return fail("generate", s);
  if (args.positional().size() != 1) return fail("generate", invalid_argument(std::string("expected one MODEL_DIR\n") + kUsage));
  const std::string model_dir = args.positional()[0];
  auto prompt = build_prompt(args, model_dir);
  if (!prompt.is_ok()) return fail("generate", prompt.status());
  engine::GenerationRequest base;
  base.prompt = prompt->ids;
  if (Status s = read_sampling(args, &base); !s.is_ok()) return fail("generate", s);
  if (args.has("stop-ids")) {
    auto stop = parse_int_list(args.get("stop-ids"));
    if (!stop.is_ok()) return fail("generate", stop.status());
    base.stop_ids.assign(stop->begin(), stop->end());
  } else if (prompt->tokenizer && !args.has("ignore-eos")) {
    base.stop_ids = prompt->tokenizer->eos_ids();
  }
  auto opts = engine_options_from(args, model_dir);
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
  // One row with a tokenizer: stream UTF-8-safe text as tokens arrive.
  std::optional<StreamDecoder> stream;
  if (prompt->tokenizer && requests.size() == 1) stream.emplace(*prompt->tokenizer, true);
  Status stream_error;
  auto on_token = [&](size_t, int32_t id) {
    if (!stream || !stream_error.is_ok()) return;
    auto piece = stream->step(id);
    if (!piece.is_ok()) {
      stream_error = piece.status();
      return;
    }
    std::fputs(piece->c_str(), stdout);
    std::fflush(stdout);
  };
  engine::GenerationStats stats;
  auto results = (*engine)->generate(requests, on_token, &stats);
  if (!results.is_ok()) return fail("generate", results.status());
  if (stream) {
    if (auto rest = stream->flush(); rest.is_ok()) std::fputs(rest->c_str(), stdout);
    std::printf("\n");
    if (!stream_error.is_ok()) return fail("generate", stream_error);
  }
  for (size_t i = 0; i < results->size() && !stream; ++i) {
    const auto& tokens = (*results)[i].tokens;
    std::printf("[%s]", rows[i].c_str());
    if (prompt->tokenizer) {
      auto text = prompt->tokenizer->decode(tokens, true);
      std::printf(" %s", text.is_ok() ? text->c_str() : text.status().to_string().c_str());
    }
    if (!prompt->tokenizer || args.has("show-ids")) {
      std::printf("%s", prompt->tokenizer ? "\n  ids:" : "");
      for (int32_t t : tokens) std::printf(" %d", t);
    }
    std::printf("\n  (finish: %s)\n", (*results)[i].finish_reason.c_str());
  }
  std::fflush(stdout);
  // Decode speed counts the steps after the first token (which came with the prefill).
  int64_t decoded = stats.generated_tokens - static_cast<int64_t>(requests.size());
  double tps = stats.decode_seconds > 0 ? static_cast<double>(decoded) / stats.decode_seconds : 0;
  std::fprintf(stderr, "prefill: %lld tokens in %.3f s (%.1f tokens/s); decode: %lld tokens in %.3f s (%.1f tokens/s, %zu rows)\n",
               static_cast<long long>(stats.prompt_tokens), stats.prefill_seconds,
               stats.prefill_seconds > 0 ? static_cast<double>(stats.prompt_tokens) / stats.prefill_seconds : 0.0,
               static_cast<long long>(decoded), stats.decode_seconds, tps, requests.size());
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND(generate_cmd, "generate", "generate text (adapters mixed in one batch)",
                    std::string(kUsage) + kEngineOptionsHelp, run);

}  // namespace nb::cli
