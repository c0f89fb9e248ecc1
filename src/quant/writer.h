// `nibble quantize`: a BF16/F16/F32 Hugging Face checkpoint → a compressed-tensors pack-quantized
// checkpoint (formats.md §2), streamed tensor by tensor.
//
// Which weights are quantized: every 2-D floating-point `X.weight` whose module X is a Linear, i.e.
// all of them except embeddings (a name part containing "embed", or wte/wpe), norms (a part
// containing "norm"), and modules matched by the ignore list (compressed-tensors selectors:
// exact name or "re:" regex anchored at the start). The ignore list always holds "lm_head", the
// MoE routers present in the checkpoint ("re:.*mlp.gate$", "re:.*block_sparse_moe.gate$",
// "re:.*shared_expert_gate$" — vLLM builds them unquantized), plus the user's patterns; it is
// written to config.json so the loader and vLLM see the same split.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "quant/quantizer.h"

namespace nb::quant {

struct QuantizeCheckpointOptions {
  QuantizeSpec spec;                     // bits, group/channel, sym/asym
  std::vector<std::string> ignore;       // extra selectors (added to the defaults)
  uint64_t max_shard_bytes = 5000000000;  // 5 GB shards, like huggingface_hub
  std::string version = "0.12.2";        // compressed-tensors version written to the config
  bool progress = true;
};

struct QuantizeCheckpointReport {
  int64_t quantized = 0;          // weights quantized
  int64_t copied = 0;             // tensors copied unchanged
  std::vector<std::string> ignore;  // the ignore list written to config.json
  std::vector<std::string> files;   // non-weight files copied
};

// Reads in_dir (config.json + model.safetensors or shards), writes out_dir (created; must not
// exist or be empty). Fails with a clear message on bad input: no config, already quantized,
// a weight whose `in` is not a multiple of the group size (name it in --ignore), ...
Result<QuantizeCheckpointReport> quantize_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                                     const QuantizeCheckpointOptions& options);

// The `quantization_config` block written for `options` and `ignore` (JSON text).
std::string quantization_config_json(const QuantizeCheckpointOptions& options, const std::vector<std::string>& ignore);

}  // namespace nb::quant
