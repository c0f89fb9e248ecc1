// nibble perplexity: perplexity of a model (optionally with an adapter) over a text file, with
// sliding windows as in the Hugging Face perplexity guide: each window of --ctx tokens scores only
// the tokens not scored by the previous window (stride --stride).
#include <cmath>
#include <cstdio>

#include "core/log.h"
#include "core/mmap.h"
#include "io/tokenizer/tokenizer.h"
#include "tools/nibble/cli.h"
#include "tools/nibble/engine_args.h"

namespace nb::cli {
namespace {

const char* kUsage =
    "usage: nibble perplexity MODEL_DIR --file TEXT [--lora DIR | --lora NAME=DIR] [--ctx N] [--stride S]\n"
    "                         [--max-tokens N]\n"
    "\n"
    "Tokenizes the file with the model's tokenizer.json and prints the perplexity exp(mean NLL) of\n"
    "every token but the first, scored with sliding windows.\n\n"
    "options:\n"
    "  --file TEXT              the text to score\n"
    "  --ctx N                  window length in tokens (default 256)\n"
    "  --stride S               tokens between window starts (default ctx / 2)\n"
    "  --max-tokens N           score at most the first N tokens of the file (default: all)\n";

// -log softmax(row)[target], in double.
double nll(const float* row, int64_t vocab, int32_t target) {
  double mx = row[0];
  for (int64_t i = 1; i < vocab; ++i) mx = std::max(mx, static_cast<double>(row[i]));
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(row[i]) - mx);
  return mx + std::log(sum) - static_cast<double>(row[target]);
}

int run(const std::vector<std::string>& argv) {
  auto parsed = Args::parse(argv, {"reference-kernels", "quiet", "no-cuda-graphs"});
  if (!parsed.is_ok()) return fail("perplexity", parsed.status());
  Args& args = *parsed;
  std::vector<std::string> known = {"file", "ctx", "stride", "max-tokens"};
  known.insert(known.end(), kEngineOptions.begin(), kEngineOptions.end());
  if (Status s = args.check_known(known); !s.is_ok()) return fail("perplexity", s);
  if (args.positional().size() != 1 || !args.has("file"))
    return fail("perplexity", invalid_argument(std::string("expected MODEL_DIR and --file\n") + kUsage));
  if (args.get_all("lora").size() > 1) return fail("perplexity", invalid_argument("perplexity takes at most one --lora"));
  const std::string model_dir = args.positional()[0];
  auto ctx = args.get_int("ctx", 256);
  if (!ctx.is_ok()) return fail("perplexity", ctx.status());
  auto stride = args.get_int("stride", *ctx / 2);
  auto limit = args.get_int("max-tokens", 0);
  if (!stride.is_ok()) return fail("perplexity", stride.status());
  if (!limit.is_ok()) return fail("perplexity", limit.status());
  if (*ctx < 2 || *stride < 1 || *stride > *ctx)
    return fail("perplexity", invalid_argument(strformat("need --ctx >= 2 and 1 <= --stride <= --ctx, got ctx %lld stride %lld",
                                                         static_cast<long long>(*ctx), static_cast<long long>(*stride))));
  auto text = read_text_file(args.get("file"));
  if (!text.is_ok()) return fail("perplexity", text.status());
  auto tokenizer = Tokenizer::load(model_dir);
  if (!tokenizer.is_ok()) return fail("perplexity", tokenizer.status());
  auto ids = tokenizer->encode(*text, false, false);
  if (!ids.is_ok()) return fail("perplexity", ids.status().with_context(args.get("file")));
  if (*limit > 0 && static_cast<int64_t>(ids->size()) > *limit) ids->resize(static_cast<size_t>(*limit));
  if (ids->size() < 2) return fail("perplexity", invalid_argument("the file has fewer than 2 tokens"));
  auto opts = engine_options_from(args, model_dir);
  if (!opts.is_ok()) return fail("perplexity", opts.status());
  opts->max_model_len = static_cast<int>(*ctx);
  opts->max_kv_tokens = *ctx + 16;
  auto engine = engine::Engine::create(*opts);
  if (!engine.is_ok()) return fail("perplexity", engine.status());
  if (Status s = load_adapters_from(args, **engine); !s.is_ok()) return fail("perplexity", s);
  std::string adapter = (*engine)->adapters().empty() ? "" : (*engine)->adapters()[0];
  const int64_t n = static_cast<int64_t>(ids->size()), vocab = (*engine)->config().vocab_size;
  double total = 0;
  int64_t scored = 0, prev_end = 0;
  Progress progress("perplexity: tokens", n);
  for (int64_t begin = 0; prev_end < n; begin += *stride) {
    int64_t end = std::min(begin + *ctx, n);
    std::vector<int32_t> window(ids->begin() + begin, ids->begin() + end);
    auto logits = (*engine)->logits(window, adapter, true);
    if (!logits.is_ok()) return fail("perplexity", logits.status());
    // Score targets at positions [max(prev_end, begin + 1), end): predicted by the row before each.
    for (int64_t t = std::max(prev_end, begin + 1); t < end; ++t) {
      total += nll(logits->data() + (t - 1 - begin) * vocab, vocab, (*ids)[static_cast<size_t>(t)]);
      ++scored;
    }
    prev_end = end;
    if (opts->verbose) progress.update(end);
  }
  if (opts->verbose) progress.finish();
  double ppl = std::exp(total / static_cast<double>(scored));
  std::printf("perplexity %.4f over %lld tokens (ctx %lld, stride %lld%s%s)\n", ppl, static_cast<long long>(scored),
              static_cast<long long>(*ctx), static_cast<long long>(*stride), adapter.empty() ? "" : ", adapter ",
              adapter.c_str());
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND(perplexity_cmd, "perplexity", "perplexity over a text file (sliding windows)",
                    std::string(kUsage) + kEngineOptionsHelp, run);

}  // namespace nb::cli
