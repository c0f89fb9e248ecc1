// Parsing of quantization configs: compressed-tensors (§2.1), GPTQ (§3.1), AWQ (§4.1).
#include "quant/quant_config.h"

#include <algorithm>
#include <cctype>

#include "core/log.h"
#include "core/mmap.h"
#include "io/json_util.h"

namespace nb::quant {

const char* method_name(QuantMethod m) {
  switch (m) {
    case QuantMethod::kNone: return "none";
    case QuantMethod::kCompressedTensors: return "compressed-tensors";
    case QuantMethod::kGptq: return "gptq";
    case QuantMethod::kAwq: return "awq";
  }
  return "?";
}

std::string QuantScheme::describe() const {
  std::string s = strformat("%s int%d %s", method_name(method), bits, strategy_name(strategy));
  if (strategy == QuantStrategy::kGroup) s += strformat(" %lld", static_cast<long long>(group_size));
  s += symmetric ? " sym" : " asym";
  if (act_order) s += " act-order";
  return s;
}

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// ---- compressed-tensors ------------------------------------------------------------------------

// `actorder`: null/false/"weight"/"static" → no g_idx; "group"/"dynamic"/true → g_idx.
Result<bool> parse_actorder(const JsonObject& w) {
  const Json* a = w.get("actorder");
  if (!a) return false;
  if (a->is_boolean()) return a->get<bool>();
  if (!a->is_string()) return w.type_error("actorder", "null, a boolean or a string", *a);
  std::string v = lower(a->get<std::string>());
  if (v == "group" || v == "dynamic") return true;
  if (v == "weight" || v == "static") return false;
  return unsupported(strformat("%s: unknown actorder '%s' (expected group, dynamic, weight, static or null)",
                               w.where("actorder").c_str(), v.c_str()));
}

// Strategy from `strategy`, or inferred from group_size (null → tensor, > 0 → group, -1 → channel).
Status parse_strategy(const JsonObject& w, QuantScheme* s) {
  NB_ASSIGN_OR_RETURN(std::string strategy, w.string_or("strategy", ""));
  const Json* gs_json = w.get("group_size");
  int64_t gs = 0;
  if (gs_json) {
    NB_ASSIGN_OR_RETURN(gs, w.int_at("group_size"));
  }
  strategy = lower(strategy);
  if (strategy.empty()) strategy = !gs_json ? "tensor" : gs > 0 ? "group" : gs == -1 ? "channel" : "";
  if (strategy == "group") {
    if (gs <= 0)
      return format_error(strformat("%s: strategy group needs group_size > 0, got %s", w.where("group_size").c_str(),
                                    gs_json ? std::to_string(gs).c_str() : "null"));
    s->strategy = QuantStrategy::kGroup;
    s->group_size = gs;
  } else if (strategy == "channel" || strategy == "tensor") {
    if (gs > 0)
      return format_error(strformat("%s: group_size %lld requires strategy 'group', got '%s'",
                                    w.where("group_size").c_str(), static_cast<long long>(gs), strategy.c_str()));
    s->strategy = strategy == "channel" ? QuantStrategy::kChannel : QuantStrategy::kTensor;
  } else if (strategy.empty()) {
    return format_error(strformat("%s: invalid group_size %lld (expected > 0, -1 or null)",
                                  w.where("group_size").c_str(), static_cast<long long>(gs)));
  } else {
    return unsupported(strformat("%s: strategy '%s' is not supported (supported: group, channel, tensor)",
                                 w.where("strategy").c_str(), strategy.c_str()));
  }
  return Status::ok();
}

// The `weights` block of a scheme.
Result<QuantScheme> parse_ct_weights(const JsonObject& w) {
  QuantScheme s;
  s.method = QuantMethod::kCompressedTensors;
  NB_ASSIGN_OR_RETURN(int64_t bits, w.int_or("num_bits", 8));
  NB_ASSIGN_OR_RETURN(std::string type, w.string_or("type", "int"));
  if (lower(type) != "int")
    return unsupported(strformat("%s: type '%s' is not supported (only int weights; float is FP8/FP4)",
                                 w.where("type").c_str(), type.c_str()));
  if (bits != 4 && bits != 8)
    return unsupported(strformat("%s: %lld-bit weights are not supported (supported: 4, 8)",
                                 w.where("num_bits").c_str(), static_cast<long long>(bits)));
  s.bits = static_cast<int>(bits);
  NB_ASSIGN_OR_RETURN(s.symmetric, w.bool_or("symmetric", true));
  const Json* dyn = w.get("dynamic");
  if (dyn && !(dyn->is_boolean() && !dyn->get<bool>()))
    return unsupported(strformat("%s: dynamic weight quantization is not supported (expected false, got %s)",
                                 w.where("dynamic").c_str(), describe_json(*dyn).c_str()));
  if (w.has("block_structure"))
    return unsupported(strformat("%s: block quantization is not supported", w.where("block_structure").c_str()));
  NB_RETURN_IF_ERROR(parse_strategy(w, &s));
  NB_ASSIGN_OR_RETURN(s.act_order, parse_actorder(w));
  if (s.act_order && s.strategy != QuantStrategy::kGroup)
    return format_error(strformat("%s: actorder 'group' requires strategy group, got %s", w.where("actorder").c_str(),
                                  strategy_name(s.strategy)));
  return s;
}

// Preset names used as config_groups keys with a list of targets (quant_scheme.py).
Result<QuantScheme> ct_preset(const std::string& name, const std::string& where) {
  QuantScheme s;
  s.method = QuantMethod::kCompressedTensors;
  s.strategy = QuantStrategy::kGroup;
  s.group_size = 128;
  if (name == "W4A16") {
    s.bits = 4;
  } else if (name == "W4A16_ASYM") {
    s.bits = 4;
    s.symmetric = false;
  } else if (name == "W8A16") {
    s.bits = 8;
  } else {
    return unsupported(strformat("%s: preset '%s' is not supported (supported: W4A16, W4A16_ASYM, W8A16)",
                                 where.c_str(), name.c_str()));
  }
  return s;
}

Status check_ct_format(const std::string& format, const std::string& where) {
  if (format == "pack-quantized") return Status::ok();
  return unsupported(strformat("%s: format '%s' is not supported (supported: pack-quantized, mixed-precision of "
                               "pack-quantized groups)", where.c_str(), format.c_str()));
}

Result<std::vector<ModuleSelector>> compile_selectors(const std::vector<std::string>& texts, const std::string& where) {
  std::vector<ModuleSelector> out;
  for (const auto& t : texts) {
    NB_ASSIGN_OR_RETURN(ModuleSelector s, ModuleSelector::compile(t, where));
    out.push_back(std::move(s));
  }
  return out;
}

// One config_groups entry: a scheme object, or a preset name mapped to a list of targets.
Result<QuantConfig::Group> parse_ct_group(const JsonObject& groups, const std::string& name, const Json& value,
                                          const std::string& global_format) {
  QuantConfig::Group g;
  g.name = name;
  const std::string where = groups.where(name);
  std::vector<std::string> targets;
  if (value.is_array()) {
    NB_ASSIGN_OR_RETURN(g.scheme, ct_preset(name, where));
    NB_ASSIGN_OR_RETURN(targets, groups.string_list_or_empty(name));
  } else {
    NB_ASSIGN_OR_RETURN(JsonObject o, groups.object_at(name));
    NB_ASSIGN_OR_RETURN(targets, o.string_list_or_empty("targets"));
    if (o.has("input_activations") || o.has("output_activations"))
      return unsupported(strformat("%s: activation quantization is not supported (weight-only schemes need "
                                   "input_activations and output_activations null)", where.c_str()));
    if (!o.has("weights")) return unsupported(strformat("%s: a scheme without weight quantization", where.c_str()));
    NB_ASSIGN_OR_RETURN(JsonObject w, o.object_at("weights"));
    NB_ASSIGN_OR_RETURN(g.scheme, parse_ct_weights(w));
    NB_ASSIGN_OR_RETURN(std::string format, o.string_or("format", global_format));
    if (global_format == "mixed-precision" && !o.has("format"))
      return format_error(strformat("%s: missing (mixed-precision configs name each group's format)",
                                    o.where("format").c_str()));
    NB_RETURN_IF_ERROR(check_ct_format(format, o.where("format")));
  }
  if (targets.empty()) return format_error(strformat("%s: no targets", where.c_str()));
  NB_ASSIGN_OR_RETURN(g.targets, compile_selectors(targets, where + " targets"));
  return g;
}

// Fails on blocks that change how weights must be read (sparsity, transforms).
Status check_ct_extras(const JsonObject& q) {
  if (const Json* sp = q.get("sparsity_config"); sp && sp->is_object() && !sp->empty()) {
    std::string f = sp->contains("format") && (*sp)["format"].is_string() ? (*sp)["format"].get<std::string>() : "";
    if (f != "dense")
      return unsupported(strformat("%s: sparse checkpoints are not supported (format '%s')",
                                   q.where("sparsity_config").c_str(), f.c_str()));
  }
  if (const Json* tc = q.get("transform_config"); tc && tc->is_object() && !tc->empty()) {
    const Json* groups = tc->contains("config_groups") ? &(*tc)["config_groups"] : nullptr;
    if (!groups || groups->is_null() || (groups->is_object() && !groups->empty()))
      return unsupported(strformat("%s: weight transforms (e.g. SpinQuant/QuIP) are not supported",
                                   q.where("transform_config").c_str()));
  }
  if (q.has("kv_cache_scheme"))
    NB_LOG_WARN("%s: KV-cache quantization is not supported; the KV cache stays in the model dtype",
                q.where("kv_cache_scheme").c_str());
  return Status::ok();
}

Result<QuantConfig> parse_compressed_tensors(const JsonObject& q) {
  QuantConfig c;
  c.method = QuantMethod::kCompressedTensors;
  c.source = q.source();
  NB_ASSIGN_OR_RETURN(std::string format, q.string_or("format", "pack-quantized"));
  if (format != "mixed-precision") NB_RETURN_IF_ERROR(check_ct_format(format, q.where("format")));
  NB_ASSIGN_OR_RETURN(std::string status, q.string_or("quantization_status", "compressed"));
  if (status != "compressed")
    return unsupported(strformat("%s: '%s' checkpoints are not supported (the weights are not compressed; "
                                 "expected 'compressed')", q.where("quantization_status").c_str(), status.c_str()));
  NB_ASSIGN_OR_RETURN(c.version, q.string_or("version", ""));
  c.packing = ct_packing_for_version(c.version);
  NB_RETURN_IF_ERROR(check_ct_extras(q));
  NB_ASSIGN_OR_RETURN(JsonObject groups, q.object_at("config_groups"));
  for (const auto& [name, value] : groups.json().items()) {
    if (value.is_null()) continue;
    NB_ASSIGN_OR_RETURN(QuantConfig::Group g, parse_ct_group(groups, name, value, format));
    c.groups.push_back(std::move(g));
  }
  if (c.groups.empty()) return format_error(strformat("%s: no config groups", q.where("config_groups").c_str()));
  NB_ASSIGN_OR_RETURN(std::vector<std::string> ignore, q.string_list_or_empty("ignore"));
  NB_ASSIGN_OR_RETURN(c.ignore, compile_selectors(ignore, q.where("ignore")));
  return c;
}

// ---- GPTQ / AWQ ------------------------------------------------------------------------------

// A field that has a synonym (bits / w_bit): the first present one.
Result<int64_t> int_either(const JsonObject& o, const char* a, const char* b, int64_t fallback) {
  return o.has(a) ? o.int_at(a) : o.int_or(b, fallback);
}

Result<QuantConfig> parse_gptq(const JsonObject& q) {
  QuantConfig c;
  c.method = QuantMethod::kGptq;
  c.source = q.source();
  QuantScheme& s = c.scheme;
  s.method = QuantMethod::kGptq;
  NB_ASSIGN_OR_RETURN(int64_t bits, int_either(q, "bits", "w_bit", 4));
  if (bits != 4 && bits != 8)
    return unsupported(strformat("%s: %lld-bit GPTQ is not supported (supported: 4, 8)", q.where("bits").c_str(),
                                 static_cast<long long>(bits)));
  s.bits = static_cast<int>(bits);
  NB_ASSIGN_OR_RETURN(int64_t gs, int_either(q, "group_size", "q_group_size", -1));
  if (gs == -1) {
    s.strategy = QuantStrategy::kChannel;
  } else if (gs > 0) {
    s.strategy = QuantStrategy::kGroup;
    s.group_size = gs;
  } else {
    return format_error(strformat("%s: expected -1 or a positive group size, got %lld", q.where("group_size").c_str(),
                                  static_cast<long long>(gs)));
  }
  NB_ASSIGN_OR_RETURN(bool desc_act, q.bool_or("desc_act", false));
  s.act_order = desc_act && s.strategy == QuantStrategy::kGroup;  // desc_act with one group changes nothing
  NB_ASSIGN_OR_RETURN(s.symmetric, q.bool_or("sym", true));
  NB_ASSIGN_OR_RETURN(bool is_marlin, q.bool_or("is_marlin_format", false));
  NB_ASSIGN_OR_RETURN(std::string fmt, q.string_or("checkpoint_format", ""));
  if (fmt.empty()) {
    NB_ASSIGN_OR_RETURN(fmt, q.string_or("format", "gptq"));
  }
  fmt = lower(fmt);
  if (is_marlin) fmt = "marlin";
  if (fmt != "gptq" && fmt != "gptq_v2")
    return unsupported(strformat("%s: GPTQ checkpoint format '%s' is not supported (supported: gptq, gptq_v2)",
                                 q.where("checkpoint_format").c_str(), fmt.c_str()));
  c.gptq_v2 = fmt == "gptq_v2";
  NB_ASSIGN_OR_RETURN(std::string pack_dtype, q.string_or("pack_dtype", "int32"));
  if (pack_dtype != "int32")
    return unsupported(strformat("%s: pack_dtype '%s' is not supported (only int32)", q.where("pack_dtype").c_str(),
                                 pack_dtype.c_str()));
  if (const Json* d = q.get("dynamic"); d && !(d->is_object() && d->empty()))
    return unsupported(strformat("%s: GPTQModel per-module 'dynamic' overrides are not supported",
                                 q.where("dynamic").c_str()));
  NB_ASSIGN_OR_RETURN(c.lm_head_quantized, q.bool_or("lm_head", false));
  if (const Json* m = q.get("modules_in_block_to_quantize")) {
    if (!m->is_array()) return q.type_error("modules_in_block_to_quantize", "a list", *m);
    for (const Json& e : *m) {  // a flat list or a list of lists of names
      for (const Json& n : e.is_array() ? e : Json::array({e})) {
        if (!n.is_string()) return q.type_error("modules_in_block_to_quantize", "module names", n);
        c.modules_in_block_to_quantize.push_back(n.get<std::string>());
      }
    }
  }
  return c;
}

Result<QuantConfig> parse_awq(const JsonObject& q) {
  QuantConfig c;
  c.method = QuantMethod::kAwq;
  c.source = q.source();
  QuantScheme& s = c.scheme;
  s.method = QuantMethod::kAwq;
  NB_ASSIGN_OR_RETURN(std::string version, q.string_or("version", "gemm"));
  if (lower(version) != "gemm")
    return unsupported(strformat("%s: AWQ version '%s' is not supported (only gemm)", q.where("version").c_str(),
                                 version.c_str()));
  NB_ASSIGN_OR_RETURN(int64_t bits, int_either(q, "bits", "w_bit", 4));
  if (bits != 4)
    return unsupported(strformat("%s: %lld-bit AWQ is not supported (only 4)", q.where("bits").c_str(),
                                 static_cast<long long>(bits)));
  NB_ASSIGN_OR_RETURN(int64_t gs, int_either(q, "group_size", "q_group_size", 128));
  if (gs <= 0)
    return unsupported(strformat("%s: AWQ gemm needs a positive group size, got %lld", q.where("group_size").c_str(),
                                 static_cast<long long>(gs)));
  NB_ASSIGN_OR_RETURN(bool zero_point, q.bool_or("zero_point", true));
  if (!zero_point)
    return unsupported(strformat("%s: AWQ without zero points is not supported", q.where("zero_point").c_str()));
  s.bits = 4;
  s.strategy = QuantStrategy::kGroup;
  s.group_size = gs;
  s.symmetric = false;
  NB_ASSIGN_OR_RETURN(c.modules_to_not_convert, q.string_list_or_empty("modules_to_not_convert"));
  return c;
}

Result<QuantConfig> parse_quant_object(const Json& j, const std::string& source, const std::string& default_method) {
  NB_ASSIGN_OR_RETURN(JsonObject q, JsonObject::make(j, source));
  std::string method = default_method;
  const char* key = q.has("quant_method") ? "quant_method" : q.has("method") ? "method" : nullptr;
  if (key) {
    NB_ASSIGN_OR_RETURN(method, q.string_at(key));
  }
  method = lower(method);
  if (method == "compressed-tensors" || method == "compressed_tensors") return parse_compressed_tensors(q);
  if (method == "gptq") return parse_gptq(q);
  if (method == "awq") return parse_awq(q);
  return unsupported(strformat("%s: quantization method '%s' is not supported (supported: compressed-tensors, gptq, "
                               "awq)", q.where("quant_method").c_str(), method.c_str()));
}

}  // namespace

Result<QuantConfig> parse_quant_config(const std::string& quantization_config_json, const std::string& model_dir) {
  if (!quantization_config_json.empty()) {
    const std::string source = path_join(model_dir, "config.json") + ": quantization_config";
    NB_ASSIGN_OR_RETURN(Json j, parse_json(quantization_config_json, source));
    if (!j.is_null()) return parse_quant_object(j, source, "");
  }
  const std::string gptq_file = path_join(model_dir, "quantize_config.json");
  if (!model_dir.empty() && file_exists(gptq_file)) {
    NB_ASSIGN_OR_RETURN(std::string text, read_text_file(gptq_file));
    NB_ASSIGN_OR_RETURN(Json j, parse_json(text, gptq_file));
    return parse_quant_object(j, gptq_file, "gptq");
  }
  QuantConfig none;
  none.source = "no quantization_config";
  return none;
}

Result<QuantConfig> load_quant_config(const std::string& model_dir) {
  const std::string path = path_join(model_dir, "config.json");
  NB_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  NB_ASSIGN_OR_RETURN(Json j, parse_json(text, path));
  NB_ASSIGN_OR_RETURN(JsonObject o, JsonObject::make(j, path));
  std::string qc;
  if (const Json* q = o.get("quantization_config")) qc = q->dump();
  return parse_quant_config(qc, model_dir);
}

// ---- scheme lookup ---------------------------------------------------------------------------

namespace {

// compressed-tensors precedence among matching targets: exact name (0), regex (1), class (2).
int match_rank(const ModuleSelector& s, const std::string& module, const std::string& class_name) {
  if (s.text().rfind("re:", 0) == 0) return s.matches(module, {}) ? 1 : -1;
  if (s.text() == module) return 0;
  if (s.text() == class_name) return 2;
  return -1;
}

bool ends_with_module(const std::string& name, const std::string& suffix) {
  if (name == suffix) return true;
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
         name[name.size() - suffix.size() - 1] == '.';
}

bool is_lm_head(const std::string& module) { return ends_with_module(module, "lm_head"); }

}  // namespace

std::optional<QuantScheme> QuantConfig::scheme_for(const std::string& module, const std::string& class_name) const {
  const std::vector<std::string> classes{class_name};
  switch (method) {
    case QuantMethod::kNone: return std::nullopt;
    case QuantMethod::kCompressedTensors: {
      for (const auto& ig : ignore)
        if (ig.matches(module, classes)) return std::nullopt;
      int best = 3;
      const QuantScheme* found = nullptr;
      for (const auto& g : groups) {
        for (const auto& t : g.targets) {
          int r = match_rank(t, module, class_name);
          if (r >= 0 && r < best) {
            best = r;
            found = &g.scheme;
          }
        }
      }
      if (!found) return std::nullopt;
      return *found;
    }
    case QuantMethod::kGptq: {
      if (class_name != "Linear") return std::nullopt;
      if (is_lm_head(module)) return lm_head_quantized ? std::optional<QuantScheme>(scheme) : std::nullopt;
      if (!modules_in_block_to_quantize.empty()) {
        bool listed = std::any_of(modules_in_block_to_quantize.begin(), modules_in_block_to_quantize.end(),
                                  [&](const std::string& m) { return ends_with_module(module, m); });
        if (!listed) return std::nullopt;
      }
      return scheme;
    }
    case QuantMethod::kAwq: {
      if (class_name != "Linear" || is_lm_head(module)) return std::nullopt;
      for (const auto& m : modules_to_not_convert)
        if (module.find(m) != std::string::npos) return std::nullopt;  // transformers: substring test
      return scheme;
    }
  }
  return std::nullopt;
}

Result<std::optional<QuantScheme>> QuantConfig::scheme_for_fused(const std::vector<std::string>& modules,
                                                                 const std::string& class_name) const {
  NB_CHECK(!modules.empty(), "scheme_for_fused with no modules");
  std::optional<QuantScheme> first = scheme_for(modules[0], class_name);
  for (size_t i = 1; i < modules.size(); ++i) {
    std::optional<QuantScheme> s = scheme_for(modules[i], class_name);
    if (s.has_value() != first.has_value() || (s && !(*s == *first)))
      return format_error(strformat("%s: fused modules '%s' (%s) and '%s' (%s) have different quantization schemes",
                                    source.c_str(), modules[0].c_str(), first ? first->describe().c_str() : "unquantized",
                                    modules[i].c_str(), s ? s->describe().c_str() : "unquantized"));
  }
  return first;
}

}  // namespace nb::quant
