// The front door of quant/: which quantization a checkpoint uses (compressed-tensors, GPTQ, AWQ),
// which scheme each module has, and loading one Linear's weight into the canonical layout.
//
//   QuantConfig qc = load_quant_config(model_dir)                    // or parse_quant_config(json, dir)
//   LinearWeight w = load_linear(checkpoint, qc, "model.layers.0.mlp.down_proj", out, in)
//
// Formats: formats.md §2 (compressed-tensors pack-quantized, mixed-precision), §3 (GPTQ v1/v2),
// §4 (AWQ gemm). Anything else is refused by name.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "quant/match.h"
#include "quant/pack.h"
#include "quant/quantized_weight.h"

namespace nb::quant {

enum class QuantMethod { kNone, kCompressedTensors, kGptq, kAwq };
const char* method_name(QuantMethod m);  // "none", "compressed-tensors", "gptq", "awq"

// How one module's weight is quantized.
struct QuantScheme {
  QuantMethod method = QuantMethod::kNone;
  int bits = 4;
  QuantStrategy strategy = QuantStrategy::kGroup;
  int64_t group_size = 0;  // group strategy: the group length; 0 for channel/tensor
  bool symmetric = true;
  bool act_order = false;  // compressed-tensors actorder "group" / GPTQ desc_act: g_idx is read
  bool operator==(const QuantScheme& o) const {
    return method == o.method && bits == o.bits && strategy == o.strategy && group_size == o.group_size &&
           symmetric == o.symmetric && act_order == o.act_order;
  }
  std::string describe() const;  // "compressed-tensors int4 group 128 sym"
};

struct QuantConfig {
  QuantMethod method = QuantMethod::kNone;
  std::string source;  // where it was read from, for messages

  // compressed-tensors: config groups in file order, the ignore list, the writer's version.
  struct Group {
    std::string name;
    std::vector<ModuleSelector> targets;
    QuantScheme scheme;
  };
  std::vector<Group> groups;
  std::vector<ModuleSelector> ignore;
  std::string version;
  BitPacking packing = BitPacking::kDense;  // from version (matters only for 3/5/6/7 bits)

  // GPTQ / AWQ: one scheme for every quantized Linear.
  QuantScheme scheme;
  bool gptq_v2 = false;                                  // zero points stored as-is (else stored minus 1)
  bool lm_head_quantized = false;                        // GPTQModel `lm_head: true`
  std::vector<std::string> modules_in_block_to_quantize;  // GPTQ: module-name suffixes; empty = all
  std::vector<std::string> modules_to_not_convert;        // AWQ: name substrings left unquantized

  // The scheme of module `module` (full name, e.g. "model.layers.3.mlp.down_proj") of class
  // `class_name`; nullopt = plain (unquantized) weight. compressed-tensors rules (§2.2): ignore
  // wins; then the best match over all groups: exact name, then regex, then class name.
  std::optional<QuantScheme> scheme_for(const std::string& module, const std::string& class_name = "Linear") const;
  // For a fused Linear (q/k/v, gate/up): every shard must resolve to the same scheme.
  Result<std::optional<QuantScheme>> scheme_for_fused(const std::vector<std::string>& modules,
                                                      const std::string& class_name = "Linear") const;
};

// Parses `quantization_config` (JSON text of the object from config.json; empty = absent). When it
// is absent, a GPTQ `quantize_config.json` in `model_dir` is read instead; with neither, the model
// is unquantized (method kNone). Unsupported methods, formats and schemes fail by name.
Result<QuantConfig> parse_quant_config(const std::string& quantization_config_json, const std::string& model_dir);
// Reads <model_dir>/config.json and calls parse_quant_config.
Result<QuantConfig> load_quant_config(const std::string& model_dir);

// One Linear's weight as loaded: the canonical quantized weight, or a plain weight, plus a bias.
struct LinearWeight {
  std::string module;
  int64_t out = 0, in = 0;
  std::optional<QuantizedWeight> quantized;
  HostTensor dense;  // [out, in] BF16/F16/F32 when not quantized
  HostTensor bias;   // [out], empty when the module has no bias
  bool is_quantized() const { return quantized.has_value(); }
};

// What load_linear would produce, without unpacking anything (for `nibble inspect`). Every tensor
// is still checked for presence, dtype and shape.
struct LinearLayout {
  std::string module;
  int64_t out = 0, in = 0;
  std::optional<QuantScheme> scheme;  // nullopt = plain weight
  int64_t num_groups = 0;             // scale columns (quantized only)
  DType dtype = DType::kBF16;         // plain weight dtype, or scale dtype when quantized
  bool has_bias = false;
  bool has_g_idx = false;             // g_idx is used (non-trivial act-order)
  std::string source_format;
  std::vector<std::string> tensors;   // every checkpoint tensor the module uses
};

// Loads module `module_prefix` (e.g. "model.layers.0.mlp.down_proj"; per-expert MoE modules are just
// more prefixes). expected_out/expected_in: the logical shape from the model config, cross-checked
// against the metadata and every tensor; pass 0 for both to take the shape from the checkpoint
// (weight_shape, or the unpacked dimensions of GPTQ/AWQ tensors) — for inspection only.
Result<LinearWeight> load_linear(const Checkpoint& ckpt, const QuantConfig& config, const std::string& module_prefix,
                                 int64_t expected_out, int64_t expected_in);
Result<LinearLayout> describe_linear(const Checkpoint& ckpt, const QuantConfig& config,
                                     const std::string& module_prefix, int64_t expected_out = 0,
                                     int64_t expected_in = 0);

}  // namespace nb::quant
