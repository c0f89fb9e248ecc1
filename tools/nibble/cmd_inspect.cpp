// nibble inspect: architecture, layers, every module's quantization and logical shape, totals.
#include <cstdio>

#include "quant/inspect.h"
#include "tools/nibble/cli.h"

namespace nb::cli {
namespace {

const char* kUsage =
    "usage: nibble inspect MODEL_DIR [--json]\n"
    "\n"
    "Describes a checkpoint: architecture and layer count; the attention (GQA or MLA), the dense and\n"
    "mixture-of-experts layers (experts, top-k, routing, shared expert) and the KV-cache bytes per\n"
    "token, from config.json; for every module its quantization (format, bits, group size,\n"
    "symmetric or not, g_idx) and logical shape [out, in], every tensor checked as the loader checks\n"
    "it (the experts of one projection on one line); totals: logical parameters, bytes on disk, bytes\n"
    "needed on the device.\n\n"
    "options:\n"
    "  --json   machine-readable output\n";

int run(const std::vector<std::string>& argv) {
  auto parsed = Args::parse(argv, {"json"});
  if (!parsed.is_ok()) return fail("inspect", parsed.status());
  if (Status s = parsed->check_known({"json"}); !s.is_ok()) return fail("inspect", s);
  if (parsed->positional().size() != 1)
    return fail("inspect", invalid_argument(std::string("expected one MODEL_DIR\n") + kUsage));
  auto report = quant::inspect_model(parsed->positional()[0]);
  if (!report.is_ok()) return fail("inspect", report.status());
  std::string text = parsed->has("json") ? quant::report_json(*report) + "\n" : quant::report_text(*report);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND(inspect_cmd, "inspect", "describe a checkpoint: modules, quantization, shapes, sizes", kUsage, run);

}  // namespace nb::cli
