#include "lora/adapter_config.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/mmap.h"

namespace nb {

// Keeps the JSON object order: rank_pattern / alpha_pattern use the first matching key.
using Json = nlohmann::ordered_json;

const char* base_module_kind_name(BaseModule::Kind kind) {
  switch (kind) {
    case BaseModule::Kind::kLinear: return "Linear";
    case BaseModule::Kind::kEmbedding: return "Embedding";
    case BaseModule::Kind::kExpertParam: return "fused expert parameter";
  }
  return "?";
}

bool ModuleSelector::list_matches(const std::string& module) const {
  for (const std::string& entry : names) {
    if (module == entry) return true;
    if (module.size() > entry.size() + 1 && module.compare(module.size() - entry.size(), entry.size(), entry) == 0 &&
        module[module.size() - entry.size() - 1] == '.')
      return true;
  }
  return false;
}

std::string ModuleSelector::describe() const {
  switch (kind) {
    case Kind::kNone: return "null";
    case Kind::kAllLinear: return "'all-linear'";
    case Kind::kRegex: return "regex '" + regex->pattern() + "'";
    case Kind::kList: break;
  }
  std::string s = "[";
  for (size_t i = 0; i < names.size(); ++i) s += (i ? ", '" : "'") + names[i] + "'";
  return s + "]";
}

namespace {

std::string short_dump(const Json& v) {
  std::string s = v.dump();
  return s.size() > 80 ? s.substr(0, 77) + "..." : s;
}

Status type_error(const std::string& src, const std::string& field, const char* expected, const Json& v) {
  return format_error(strformat("%s: field '%s': expected %s, got %s %s", src.c_str(), field.c_str(), expected,
                                v.type_name(), short_dump(v).c_str()));
}

// The field's value, or nullptr when absent or null (PEFT treats both as "not set").
const Json* field(const Json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

Result<int> read_int(const std::string& src, const std::string& name, const Json& v) {
  if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    if (x >= INT32_MIN && x <= INT32_MAX) return static_cast<int>(x);
  } else if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 2e9) return static_cast<int>(d);
  }
  return type_error(src, name, "an integer", v);
}

Result<double> read_number(const std::string& src, const std::string& name, const Json& v) {
  if (!v.is_number()) return type_error(src, name, "a number", v);
  double d = v.get<double>();
  if (!std::isfinite(d)) return type_error(src, name, "a finite number", v);
  return d;
}

Result<bool> read_bool(const Json& obj, const std::string& src, const char* name, bool def) {
  const Json* v = field(obj, name);
  if (!v) return def;
  if (!v->is_boolean()) return type_error(src, name, "true or false", *v);
  return v->get<bool>();
}

Result<std::vector<std::string>> read_string_list(const std::string& src, const std::string& name, const Json& v) {
  if (!v.is_array()) return type_error(src, name, "a list of strings", v);
  std::vector<std::string> out;
  for (const Json& e : v) {
    if (!e.is_string()) return type_error(src, name + "[]", "a string", e);
    out.push_back(e.get<std::string>());
  }
  return out;
}

// target_modules / exclude_modules.
Result<ModuleSelector> read_selector(const Json& obj, const std::string& src, const char* name, bool allow_all_linear) {
  ModuleSelector sel;
  const Json* v = field(obj, name);
  if (!v) return sel;
  if (v->is_string()) {
    std::string s = v->get<std::string>();
    std::string lower = s;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    if (allow_all_linear && lower == "all-linear") {
      sel.kind = ModuleSelector::Kind::kAllLinear;
      return sel;
    }
    NB_ASSIGN_OR_RETURN(PyRegex re, PyRegex::compile(s, src + ": field '" + name + "'"));
    sel.kind = ModuleSelector::Kind::kRegex;
    sel.regex = std::move(re);
    return sel;
  }
  NB_ASSIGN_OR_RETURN(sel.names, read_string_list(src, name, *v));
  sel.kind = ModuleSelector::Kind::kList;
  return sel;
}

template <typename T, typename ReadFn>
Result<std::vector<PatternOverride<T>>> read_patterns(const Json& obj, const std::string& src, const char* name,
                                                      ReadFn read_value) {
  std::vector<PatternOverride<T>> out;
  const Json* v = field(obj, name);
  if (!v) return out;
  if (!v->is_object()) return type_error(src, name, "an object {pattern: value}", *v);
  for (auto it = v->begin(); it != v->end(); ++it) {
    std::string what = std::string(name) + "['" + it.key() + "']";
    NB_ASSIGN_OR_RETURN(T value, read_value(src, what, it.value()));
    // PEFT get_pattern_key: re.match(rf"(.*\.)?({key})$", module_name).
    NB_ASSIGN_OR_RETURN(PyRegex re, PyRegex::compile("(.*\\.)?(" + it.key() + ")$", src + ": " + what));
    out.push_back(PatternOverride<T>{it.key(), std::move(re), value});
  }
  return out;
}

// Fields whose effect nibble does not implement: refuse rather than serve wrong outputs.
Status refuse_unsupported(const Json& obj, const std::string& src) {
  NB_ASSIGN_OR_RETURN(bool fan_in_fan_out, read_bool(obj, src, "fan_in_fan_out", false));
  if (fan_in_fan_out)
    return unsupported(src + ": fan_in_fan_out=true (GPT-2 Conv1D weights stored [in, out]) is not supported; "
                             "no nibble model has Conv1D layers");
  if (const Json* bias = field(obj, "bias")) {
    if (!bias->is_string()) return type_error(src, "bias", "\"none\", \"all\" or \"lora_only\"", *bias);
    std::string b = bias->get<std::string>();
    if (b != "none")
      return unsupported(strformat("%s: bias='%s' trains base biases, not supported (they are saved in the "
                                   "adapter); only bias='none' is", src.c_str(), b.c_str()));
  }
  NB_ASSIGN_OR_RETURN(bool lora_bias, read_bool(obj, src, "lora_bias", false));
  if (lora_bias) return unsupported(src + ": lora_bias=true (a bias on lora_B) is not supported");
  NB_ASSIGN_OR_RETURN(bool use_dora, read_bool(obj, src, "use_dora", false));
  if (use_dora)
    return unsupported(src + ": use_dora=true: DoRA (weight-decomposed LoRA, lora_magnitude_vector) is not "
                             "supported; merge the adapter into the base weights or train without DoRA");
  NB_ASSIGN_OR_RETURN(bool use_qalora, read_bool(obj, src, "use_qalora", false));
  if (use_qalora) return unsupported(src + ": use_qalora=true (QALoRA pools the input of lora_A) is not supported");
  struct Refused {
    const char* name;
    const char* why;
  };
  static const Refused kRefused[] = {
      {"layer_replication", "layer_replication (stacked, repeated decoder layers) is not supported"},
      {"trainable_token_indices", "trainable_token_indices (trained token-embedding deltas) is not supported"},
      {"alora_invocation_tokens", "alora_invocation_tokens (activated LoRA) is not supported"},
      {"arrow_config", "arrow_config (Arrow routing between adapters) is not supported"},
  };
  for (const Refused& r : kRefused) {
    const Json* v = field(obj, r.name);
    if (v && !((v->is_array() || v->is_object()) && v->empty())) return unsupported(src + ": " + r.why);
  }
  return Status::ok();
}

Status read_rank_alpha(const Json& obj, AdapterConfig* c) {
  const std::string& src = c->source;
  if (const Json* v = field(obj, "r")) {
    NB_ASSIGN_OR_RETURN(c->r, read_int(src, "r", *v));
  }
  if (c->r <= 0) return format_error(strformat("%s: field 'r': expected a positive rank, got %d", src.c_str(), c->r));
  if (const Json* v = field(obj, "lora_alpha")) {
    NB_ASSIGN_OR_RETURN(c->lora_alpha, read_number(src, "lora_alpha", *v));
  }
  NB_ASSIGN_OR_RETURN(c->use_rslora, read_bool(obj, src, "use_rslora", false));
  auto read_rank = [](const std::string& s, const std::string& what, const Json& v) -> Result<int> {
    NB_ASSIGN_OR_RETURN(int r, read_int(s, what, v));
    if (r <= 0) return format_error(strformat("%s: field '%s': expected a positive rank, got %d", s.c_str(),
                                              what.c_str(), r));
    return r;
  };
  NB_ASSIGN_OR_RETURN(c->rank_pattern, read_patterns<int>(obj, src, "rank_pattern", read_rank));
  NB_ASSIGN_OR_RETURN(c->alpha_pattern, read_patterns<double>(obj, src, "alpha_pattern", read_number));
  return Status::ok();
}

Status read_layers(const Json& obj, AdapterConfig* c) {
  const std::string& src = c->source;
  const Json* lt = field(obj, "layers_to_transform");
  const Json* lp = field(obj, "layers_pattern");
  if (c->target_modules.kind == ModuleSelector::Kind::kRegex ||
      c->target_modules.kind == ModuleSelector::Kind::kAllLinear) {
    // PEFT's LoraConfig.__post_init__ raises for this combination.
    if (lt) return format_error(src + ": layers_to_transform cannot be used when target_modules is a string");
    if (lp) return format_error(src + ": layers_pattern cannot be used when target_modules is a string");
  }
  if (lt) {
    if (lt->is_array()) {
      for (const Json& e : *lt) {
        NB_ASSIGN_OR_RETURN(int idx, read_int(src, "layers_to_transform[]", e));
        c->layers_to_transform.push_back(idx);
      }
    } else {
      NB_ASSIGN_OR_RETURN(int idx, read_int(src, "layers_to_transform", *lt));
      c->layers_to_transform.push_back(idx);
    }
  }
  if (lp) {
    if (lp->is_string()) {
      if (!lp->get<std::string>().empty()) c->layers_pattern.push_back(lp->get<std::string>());
    } else {
      NB_ASSIGN_OR_RETURN(c->layers_pattern, read_string_list(src, "layers_pattern", *lp));
    }
  }
  // PEFT: lazy ".*?" so that "...layers.1.experts.0..." yields the layer, not the expert index.
  if (c->layers_pattern.empty()) {
    NB_ASSIGN_OR_RETURN(PyRegex re, PyRegex::compile(".*?\\.[^.]*\\.(\\d+)\\.", src + ": layer index"));
    c->layer_index_regexes.push_back(std::move(re));
  }
  for (const std::string& p : c->layers_pattern) {
    NB_ASSIGN_OR_RETURN(PyRegex re, PyRegex::compile(".*?\\." + p + "\\.(\\d+)\\.", src + ": layers_pattern"));
    c->layer_index_regexes.push_back(std::move(re));
  }
  return Status::ok();
}

Status read_modules_to_save(const Json& obj, AdapterConfig* c) {
  const Json* v = field(obj, "modules_to_save");
  if (!v) return Status::ok();
  NB_ASSIGN_OR_RETURN(c->modules_to_save, read_string_list(c->source, "modules_to_save", *v));
  for (const std::string& m : c->modules_to_save) {
    // PEFT never puts LoRA on a modules_to_save module (nor inside one).
    NB_ASSIGN_OR_RETURN(PyRegex re, PyRegex::compile("(^|.*\\.)" + m + "($|\\..*)", c->source + ": modules_to_save"));
    c->modules_to_save_regexes.push_back(std::move(re));
  }
  return Status::ok();
}

Result<Json> parse_json(const std::string& text, const std::string& src) {
  Json j;
  try {
    j = Json::parse(text);
  } catch (const std::exception& e) {
    return format_error(strformat("%s: invalid JSON: %s", src.c_str(), e.what()));
  }
  if (!j.is_object()) return type_error(src, "(top level)", "a JSON object", j);
  return j;
}

}  // namespace

Result<AdapterConfig> parse_adapter_config(const std::string& json_text, const std::string& source) {
  NB_ASSIGN_OR_RETURN(Json j, parse_json(json_text, source));
  AdapterConfig c;
  c.source = source;
  if (const Json* v = field(j, "peft_type")) {
    if (!v->is_string()) return type_error(source, "peft_type", "a string", *v);
    c.peft_type = v->get<std::string>();
  }
  if (c.peft_type != "LORA")
    return unsupported(strformat("%s: peft_type is '%s'; only LORA adapters are supported", source.c_str(),
                                 c.peft_type.c_str()));
  for (auto [name, dst] : {std::pair{"base_model_name_or_path", &c.base_model_name_or_path},
                           std::pair{"peft_version", &c.peft_version}}) {
    const Json* v = field(j, name);
    if (v && !v->is_string()) return type_error(source, name, "a string", *v);
    if (v) *dst = v->get<std::string>();
  }
  NB_RETURN_IF_ERROR(refuse_unsupported(j, source));
  NB_RETURN_IF_ERROR(read_rank_alpha(j, &c));
  NB_ASSIGN_OR_RETURN(c.target_modules, read_selector(j, source, "target_modules", true));
  if (const Json* tp = field(j, "target_parameters"); tp && !tp->is_null()) {
    NB_ASSIGN_OR_RETURN(c.target_parameters, read_string_list(source, "target_parameters", *tp));
  }
  // PEFT allows an empty target_modules when target_parameters names the LoRA sites.
  if (c.target_modules.kind == ModuleSelector::Kind::kNone && c.target_parameters.empty())
    return format_error(source + ": target_modules is missing or null and target_parameters is empty; the adapter "
                                 "names no modules");
  NB_ASSIGN_OR_RETURN(c.exclude_modules, read_selector(j, source, "exclude_modules", false));
  NB_RETURN_IF_ERROR(read_layers(j, &c));
  NB_RETURN_IF_ERROR(read_modules_to_save(j, &c));
  return c;
}

Result<AdapterConfig> read_adapter_config(const std::string& path) {
  if (!file_exists(path)) return not_found(path + ": adapter config not found");
  NB_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  return parse_adapter_config(text, path);
}

std::optional<int> layer_index_of(const AdapterConfig& config, const std::string& name) {
  for (const PyRegex& re : config.layer_index_regexes) {
    std::optional<std::string> digits = re.match_group(name, 1);
    if (!digits) continue;
    // PEFT stops at the first pattern that matches.
    int64_t v = 0;
    for (char ch : *digits) {
      if (ch < '0' || ch > '9' || v > INT32_MAX / 10) return std::nullopt;  // non-ASCII digit / overflow
      v = v * 10 + (ch - '0');
    }
    return static_cast<int>(v);
  }
  return std::nullopt;
}

bool targets_parameter(const AdapterConfig& config, const std::string& key) {
  for (const std::string& tp : config.target_parameters) {
    if (key == tp) return true;
    if (key.size() > tp.size() + 1 && key.compare(key.size() - tp.size(), tp.size(), tp) == 0 &&
        key[key.size() - tp.size() - 1] == '.')
      return true;
  }
  return false;
}

bool is_targeted(const AdapterConfig& config, const BaseModule& module) {
  const std::string& name = module.name;
  // target_parameters (PEFT _inject_parameters): "<module>.<param>" equals an entry or ends with "." + it.
  // A 2-D parameter ("mlp.gate.weight") gets the same factors as LoRA on a Linear of that module.
  if (module.is_expert_param()) return targets_parameter(config, name);
  if (module.is_linear() && targets_parameter(config, name + ".weight")) return true;
  const ModuleSelector& ex = config.exclude_modules;
  if (ex.kind == ModuleSelector::Kind::kRegex && ex.regex->fullmatch(name)) return false;
  if (ex.kind == ModuleSelector::Kind::kList && ex.list_matches(name)) return false;
  for (const PyRegex& re : config.modules_to_save_regexes)
    if (re.match(name)) return false;
  const ModuleSelector& t = config.target_modules;
  switch (t.kind) {
    case ModuleSelector::Kind::kNone: return false;
    case ModuleSelector::Kind::kRegex: return t.regex->fullmatch(name);
    case ModuleSelector::Kind::kAllLinear: return module.is_linear() && !is_output_head(module);
    case ModuleSelector::Kind::kList: break;
  }
  // An exact name in the list bypasses layers_to_transform (PEFT checks `key in target_modules` first).
  if (std::find(t.names.begin(), t.names.end(), name) != t.names.end()) return true;
  if (!t.list_matches(name)) return false;
  if (config.layers_to_transform.empty()) return true;
  std::optional<int> idx = layer_index_of(config, name);
  if (!idx) return false;
  const auto& lt = config.layers_to_transform;
  return std::find(lt.begin(), lt.end(), *idx) != lt.end();
}

bool is_module_to_save(const AdapterConfig& config, const std::string& module) {
  ModuleSelector sel;
  sel.kind = ModuleSelector::Kind::kList;
  sel.names = config.modules_to_save;
  return sel.list_matches(module);
}

ModuleLoraSpec lora_spec_for(const AdapterConfig& config, const std::string& name) {
  ModuleLoraSpec s;
  s.rank = config.r;
  s.alpha = config.lora_alpha;
  for (const auto& p : config.rank_pattern) {
    if (p.regex.match(name)) {
      s.rank = p.value;
      s.rank_key = p.key;
      break;
    }
  }
  for (const auto& p : config.alpha_pattern) {
    if (p.regex.match(name)) {
      s.alpha = p.value;
      s.alpha_key = p.key;
      break;
    }
  }
  double denom = config.use_rslora ? std::sqrt(static_cast<double>(s.rank)) : static_cast<double>(s.rank);
  s.scaling = static_cast<float>(s.alpha / denom);
  return s;
}

}  // namespace nb
