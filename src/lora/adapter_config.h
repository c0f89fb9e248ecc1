// PEFT `adapter_config.json` (formats.md §6.1): parsing, and PEFT's rules for which base modules
// an adapter targets and with which rank, alpha and scaling.
//
// Fields that change inference in ways nibble does not implement (DoRA, lora_bias, trained base
// biases, fan_in_fan_out, layer_replication, trainable tokens, aLoRA, QALoRA, Arrow) are refused
// with a message; fields with no effect at inference are ignored.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "lora/base_module.h"
#include "io/py_regex.h"

namespace nb {

// target_modules / exclude_modules: a list (name equals an entry or ends with "." + entry),
// a regex string (re.fullmatch over the module name), or "all-linear" (targets only).
struct ModuleSelector {
  enum class Kind { kNone, kList, kRegex, kAllLinear };
  Kind kind = Kind::kNone;
  std::vector<std::string> names;  // kList
  std::optional<PyRegex> regex;    // kRegex

  // List semantics only: equals an entry or ends with "." + entry.
  bool list_matches(const std::string& module) const;
  std::string describe() const;  // for messages: ["q_proj", "v_proj"] / regex '...' / all-linear
};

// One rank_pattern / alpha_pattern entry, in the JSON object's order.
template <typename T>
struct PatternOverride {
  std::string key;
  PyRegex regex;  // re.match(rf"(.*\.)?({key})$", name)
  T value;
};

struct AdapterConfig {
  std::string source;  // path of the file, for messages
  std::string peft_type = "LORA";
  std::string base_model_name_or_path;
  std::string peft_version;  // "" when absent (written by PEFT >= 0.18.0)
  int r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  ModuleSelector target_modules;
  ModuleSelector exclude_modules;
  // target_parameters: "<module>.<param>" suffixes (PEFT >= 0.17): fused 3-D MoE expert parameters
  // ("mlp.experts.gate_up_proj") or a 2-D weight ("mlp.gate.weight", the same as LoRA on that Linear).
  std::vector<std::string> target_parameters;
  std::vector<PatternOverride<int>> rank_pattern;
  std::vector<PatternOverride<double>> alpha_pattern;
  // layers_to_transform: empty = all layers (an int in the file becomes one entry).
  std::vector<int> layers_to_transform;
  std::vector<std::string> layers_pattern;
  std::vector<PyRegex> layer_index_regexes;  // built from layers_pattern (or the default)
  std::vector<std::string> modules_to_save;
  std::vector<PyRegex> modules_to_save_regexes;  // (^|.*\.){m}($|\..*), excludes them from targets
};

// Parses adapter_config.json text. `source` names the file in errors.
Result<AdapterConfig> parse_adapter_config(const std::string& json_text, const std::string& source);
Result<AdapterConfig> read_adapter_config(const std::string& path);

// PEFT's check_target_module_exists for one base module (exclusions, modules_to_save,
// list/regex/all-linear, layers_to_transform with layers_pattern), and target_parameters for fused
// expert parameters and 2-D weights.
bool is_targeted(const AdapterConfig& config, const BaseModule& module);

// Whether `module` is one of config.modules_to_save (equals an entry or ends with "." + entry).
bool is_module_to_save(const AdapterConfig& config, const std::string& module);

// Rank, alpha and scaling PEFT gives module `name` (rank_pattern / alpha_pattern applied).
struct ModuleLoraSpec {
  int rank = 0;
  double alpha = 0;
  float scaling = 0;
  std::string rank_key;   // the rank_pattern key used, "" = config r
  std::string alpha_key;  // the alpha_pattern key used, "" = config lora_alpha
};
ModuleLoraSpec lora_spec_for(const AdapterConfig& config, const std::string& name);

// The layer index PEFT reads from a module name for layers_to_transform; nullopt when none.
std::optional<int> layer_index_of(const AdapterConfig& config, const std::string& name);

}  // namespace nb
