// nibble quantize: a BF16/F16/F32 checkpoint → compressed-tensors pack-quantized (W4A16 / W8A16).
#include <cstdio>

#include "quant/writer.h"
#include "tools/nibble/cli.h"

namespace nb::cli {
namespace {

const char* kUsage =
    "usage: nibble quantize IN_DIR OUT_DIR --scheme w4a16|w8a16 [--group-size N|channel] [--asym]\n"
    "                       [--ignore PATTERN]...\n"
    "\n"
    "Quantizes every Linear weight of a Hugging Face checkpoint (config.json + model.safetensors or\n"
    "shards) with round-to-nearest, exactly as compressed-tensors computes it, and writes a\n"
    "compressed-tensors pack-quantized checkpoint to OUT_DIR (new or empty): tensors streamed one at a\n"
    "time, shards of 5 GB, config.json with a quantization_config block, and every other file\n"
    "(tokenizer, chat template, generation config) copied.\n"
    "\n"
    "Linear weights are the 2-D `X.weight` tensors other than embeddings and norms. lm_head and MoE\n"
    "routers (mlp.gate, block_sparse_moe.gate, shared_expert_gate) stay unquantized.\n\n"
    "options:\n"
    "  --scheme S        w4a16 (INT4) or w8a16 (INT8) weights, 16-bit activations\n"
    "  --group-size N    columns per scale group (default 128); -1 or 'channel' for one scale per row\n"
    "  --asym            asymmetric (zero points); default symmetric\n"
    "  --ignore PATTERN  also leave these modules unquantized (repeatable): a full module name, or\n"
    "                    're:REGEX' matched from the start of the name (Python re.match)\n"
    "  --quiet           no progress output\n";

Result<quant::QuantizeCheckpointOptions> options_from(const Args& args) {
  quant::QuantizeCheckpointOptions o;
  const std::string scheme = args.get("scheme");
  if (scheme == "w4a16") o.spec.bits = 4;
  else if (scheme == "w8a16") o.spec.bits = 8;
  else return invalid_argument(strformat("--scheme: expected w4a16 or w8a16, got '%s'", scheme.c_str()));
  const std::string gs = args.get("group-size", "128");
  if (gs == "channel" || gs == "-1") {
    o.spec.strategy = quant::QuantStrategy::kChannel;
    o.spec.group_size = 0;
  } else {
    NB_ASSIGN_OR_RETURN(int64_t n, args.get_int("group-size", 128));
    if (n <= 0) return invalid_argument(strformat("--group-size: expected a positive number, -1 or channel, got %s", gs.c_str()));
    o.spec.group_size = n;
  }
  o.spec.symmetric = !args.has("asym");
  o.ignore = args.get_all("ignore");
  o.progress = !args.has("quiet");
  return o;
}

int run(const std::vector<std::string>& argv) {
  auto parsed = Args::parse(argv, {"asym", "quiet"});
  if (!parsed.is_ok()) return fail("quantize", parsed.status());
  const Args& args = *parsed;
  if (Status s = args.check_known({"scheme", "group-size", "asym", "ignore", "quiet"}); !s.is_ok())
    return fail("quantize", s);
  if (args.positional().size() != 2)
    return fail("quantize", invalid_argument(std::string("expected IN_DIR and OUT_DIR\n") + kUsage));
  if (!args.has("scheme")) return fail("quantize", invalid_argument("--scheme is required (w4a16 or w8a16)"));
  auto opts = options_from(args);
  if (!opts.is_ok()) return fail("quantize", opts.status());
  auto report = quant::quantize_checkpoint(args.positional()[0], args.positional()[1], *opts);
  if (!report.is_ok()) return fail("quantize", report.status());
  std::string ignore;
  for (const auto& s : report->ignore) ignore += (ignore.empty() ? "" : ", ") + s;
  std::printf("quantized %lld weights, copied %lld tensors and %zu other files to %s (ignore: %s)\n",
              static_cast<long long>(report->quantized), static_cast<long long>(report->copied),
              report->files.size(), args.positional()[1].c_str(), ignore.c_str());
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND(quantize_cmd, "quantize", "quantize a checkpoint to INT4/INT8 (compressed-tensors)", kUsage, run);

}  // namespace nb::cli
