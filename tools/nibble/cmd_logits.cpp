// nibble logits: the logits of one token sequence as JSON, to compare nibble with any other
// implementation.
#include <cstdio>
#include <fstream>

#include "tools/nibble/cli.h"
#include "tools/nibble/engine_args.h"

namespace nb::cli {
namespace {

const char* kUsage =
    "usage: nibble logits MODEL_DIR --ids 1,2,3 --out FILE.json [--lora DIR | --lora NAME=DIR] [--all-positions]\n"
    "\n"
    "Writes {\"shape\": [rows, vocab], \"logits\": [...]} for the last position (or every position with\n"
    "--all-positions), computed with the adapter if one is given.\n\n"
    "options:\n"
    "  --ids LIST               comma-separated token ids\n"
    "  --out FILE               output JSON file ('-' for standard output)\n"
    "  --all-positions          logits of every position, not only the last\n";

int run(const std::vector<std::string>& argv) {
  auto parsed = Args::parse(argv, {"all-positions", "reference-kernels", "quiet", "no-cuda-graphs"});
  if (!parsed.is_ok()) return fail("logits", parsed.status());
  Args& args = *parsed;
  std::vector<std::string> known = {"ids", "out", "all-positions"};
  known.insert(known.end(), kEngineOptions.begin(), kEngineOptions.end());
  if (Status s = args.check_known(known); !s.is_ok()) return fail("logits", s);
  if (args.positional().size() != 1) return fail("logits", invalid_argument(std::string("expected one MODEL_DIR\n") + kUsage));
  if (!args.has("ids") || !args.has("out")) return fail("logits", invalid_argument("--ids and --out are required"));
  if (args.get_all("lora").size() > 1) return fail("logits", invalid_argument("logits takes at most one --lora"));
  auto ids64 = parse_int_list(args.get("ids"));
  if (!ids64.is_ok()) return fail("logits", ids64.status());
  std::vector<int32_t> ids(ids64->begin(), ids64->end());
  auto opts = engine_options_from(args, args.positional()[0]);
  if (!opts.is_ok()) return fail("logits", opts.status());
  auto engine = engine::Engine::create(*opts);
  if (!engine.is_ok()) return fail("logits", engine.status());
  if (Status s = load_adapters_from(args, **engine); !s.is_ok()) return fail("logits", s);
  std::string adapter = (*engine)->adapters().empty() ? "" : (*engine)->adapters()[0];
  bool all = args.has("all-positions");
  auto logits = (*engine)->logits(ids, adapter, all);
  if (!logits.is_ok()) return fail("logits", logits.status());
  int64_t vocab = (*engine)->config().vocab_size;
  int64_t rows = static_cast<int64_t>(logits->size()) / vocab;
  std::string out = args.get("out");
  FILE* f = out == "-" ? stdout : std::fopen(out.c_str(), "w");
  if (!f) return fail("logits", io_error(strformat("%s: cannot open for writing", out.c_str())));
  std::fprintf(f, "{\"shape\": [%lld, %lld], \"logits\": [", static_cast<long long>(rows), static_cast<long long>(vocab));
  for (size_t i = 0; i < logits->size(); ++i) std::fprintf(f, i ? ", %.9g" : "%.9g", (*logits)[i]);
  std::fprintf(f, "]}\n");
  if (f != stdout) std::fclose(f);
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND(logits_cmd, "logits", "write the logits of a token sequence as JSON",
                    std::string(kUsage) + kEngineOptionsHelp, run);

}  // namespace nb::cli
