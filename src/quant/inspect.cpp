#include "quant/inspect.h"

#include <cctype>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/mmap.h"
#include "io/json_util.h"
#include "io/model_config.h"

namespace nb::quant {

namespace {

using OrderedJson = nlohmann::ordered_json;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Module prefixes of the checkpoint: P.weight_packed, P.qweight, or a 2-D P.weight.
std::set<std::string> find_modules(const Checkpoint& ck) {
  std::set<std::string> modules;
  for (const auto& name : ck.names()) {
    for (const char* suffix : {".weight_packed", ".qweight", ".weight"}) {
      if (!ends_with(name, suffix)) continue;
      if (std::string(suffix) == ".weight" && ck.find(name)->shape.size() != 2) break;
      modules.insert(name.substr(0, name.size() - std::strlen(suffix)));
      break;
    }
  }
  return modules;
}

uint64_t device_bytes_of(const Checkpoint& ck, const LinearLayout& l) {
  uint64_t bytes = 0;
  if (l.scheme) {
    const uint64_t row = l.scheme->bits == 4 ? static_cast<uint64_t>((l.in + 1) / 2) : static_cast<uint64_t>(l.in);
    const uint64_t cells = static_cast<uint64_t>(l.out * l.num_groups);
    bytes = static_cast<uint64_t>(l.out) * row + dtype_bytes(l.dtype, cells);
    if (!l.scheme->symmetric) bytes += cells;
    if (l.has_g_idx) bytes += 4 * static_cast<uint64_t>(l.in);
    if (l.has_bias) bytes += ck.find(l.module + ".bias")->nbytes();
  } else {
    for (const auto& t : l.tensors) bytes += ck.find(t)->nbytes();
  }
  return bytes;
}

ArchSummary summarize(const ModelConfig& c) {
  ArchSummary a;
  a.known = true;
  for (int l = 0; l < c.num_hidden_layers; ++l) (c.is_moe_layer(l) ? a.moe_layers : a.dense_layers) += 1;
  a.dense_intermediate = c.intermediate_size;
  if (a.moe_layers > 0) {
    a.experts = c.num_experts;
    a.top_k = c.num_experts_per_tok;
    a.expert_intermediate = c.moe_intermediate_size;
    a.shared_intermediate = c.shared_expert_intermediate_size;
    a.shared_gate = c.arch == Arch::kQwen2Moe && a.shared_intermediate > 0;
    if (c.arch == Arch::kDeepseekV3) {
      a.routing = strformat("sigmoid + correction bias, top-%lld from the best %lld of %lld groups%s, x%g",
                            static_cast<long long>(a.top_k), static_cast<long long>(c.topk_group),
                            static_cast<long long>(c.n_group), c.norm_topk_prob ? ", renormalised" : "",
                            c.routed_scaling_factor);
    } else {
      a.routing = strformat("softmax top-%lld%s", static_cast<long long>(a.top_k),
                            c.norm_topk_prob ? ", renormalised" : "");
    }
  }
  const int64_t layers = c.num_hidden_layers;
  if (c.arch == Arch::kDeepseekV3) {
    a.attention = strformat("MLA %lld heads, q_lora_rank %s, kv_lora_rank %lld, qk %lld + %lld rope, v %lld",
                            static_cast<long long>(c.num_attention_heads),
                            c.q_lora_rank > 0 ? std::to_string(c.q_lora_rank).c_str() : "none (q_proj)",
                            static_cast<long long>(c.kv_lora_rank), static_cast<long long>(c.qk_nope_head_dim),
                            static_cast<long long>(c.qk_rope_head_dim), static_cast<long long>(c.v_head_dim));
    a.kv_elements_per_token = layers * (c.kv_lora_rank + c.qk_rope_head_dim);
    a.kv_layout = strformat("%lld layers x (%lld latent + %lld rope key)", static_cast<long long>(layers),
                            static_cast<long long>(c.kv_lora_rank), static_cast<long long>(c.qk_rope_head_dim));
  } else {
    a.attention = strformat("GQA %lld/%lld heads x %lld", static_cast<long long>(c.num_attention_heads),
                            static_cast<long long>(c.num_key_value_heads), static_cast<long long>(c.head_dim));
    a.kv_elements_per_token = layers * c.num_key_value_heads * 2 * c.head_dim;
    a.kv_layout = strformat("%lld layers x %lld KV heads x (%lld key + %lld value)", static_cast<long long>(layers),
                            static_cast<long long>(c.num_key_value_heads), static_cast<long long>(c.head_dim),
                            static_cast<long long>(c.head_dim));
  }
  return a;
}

// "model.layers.3.mlp.experts.17.gate_proj" -> ("model.layers.3.mlp.experts.", 17, ".gate_proj")
bool split_expert(const std::string& module, std::string* prefix, long* index, std::string* suffix) {
  static const std::string kExperts = ".experts.";
  const size_t p = module.rfind(kExperts);
  if (p == std::string::npos) return false;
  size_t i = p + kExperts.size(), j = i;
  while (j < module.size() && std::isdigit(static_cast<unsigned char>(module[j]))) ++j;
  if (j == i || j == module.size() || module[j] != '.') return false;
  *prefix = module.substr(0, i);
  *index = std::strtol(module.c_str() + i, nullptr, 10);
  *suffix = module.substr(j);
  return true;
}

// Architecture and layer count: io's ModelConfig when it parses, else the raw fields.
void read_architecture(const std::string& dir, const Checkpoint& ck, ModelReport* r) {
  Result<ModelConfig> mc = load_model_config(dir);
  if (mc.is_ok()) {
    r->summary = summarize(*mc);
    r->architecture = mc->architecture;
    r->model_type = mc->model_type;
    r->num_layers = mc->num_hidden_layers;
    return;
  }
  Result<std::string> text = read_text_file(path_join(dir, "config.json"));
  Result<Json> j = text.is_ok() ? parse_json(*text, "config.json") : Result<Json>(text.status());
  if (j.is_ok() && j->is_object()) {
    if (j->contains("architectures") && (*j)["architectures"].is_array() && !(*j)["architectures"].empty() &&
        (*j)["architectures"][0].is_string())
      r->architecture = (*j)["architectures"][0].get<std::string>();
    if (j->contains("model_type") && (*j)["model_type"].is_string()) r->model_type = (*j)["model_type"].get<std::string>();
    if (j->contains("num_hidden_layers") && (*j)["num_hidden_layers"].is_number_integer())
      r->num_layers = (*j)["num_hidden_layers"].get<int64_t>();
  }
  if (r->num_layers > 0) return;
  std::set<long> layers;  // count "layers.N." in tensor names
  for (const auto& name : ck.names()) {
    size_t p = name.find("layers.");
    if (p != std::string::npos && p + 7 < name.size() && std::isdigit(static_cast<unsigned char>(name[p + 7])))
      layers.insert(std::strtol(name.c_str() + p + 7, nullptr, 10));
  }
  r->num_layers = static_cast<int64_t>(layers.size());
}

}  // namespace

Result<ModelReport> inspect_model(const std::string& model_dir) {
  ModelReport r;
  r.model_dir = model_dir;
  NB_ASSIGN_OR_RETURN(Checkpoint ck, Checkpoint::open_dir(model_dir));
  NB_ASSIGN_OR_RETURN(QuantConfig qc, load_quant_config(model_dir));
  r.method = qc.method;
  r.quant_source = qc.source;
  read_architecture(model_dir, ck, &r);
  std::set<std::string> used, files;
  const QuantConfig plain;  // modules stored unquantized (embeddings too) are described as stored
  for (const auto& m : find_modules(ck)) {
    const bool stored_quantized = ck.find(m + ".weight_packed") || ck.find(m + ".qweight");
    NB_ASSIGN_OR_RETURN(LinearLayout l, describe_linear(ck, stored_quantized ? qc : plain, m));
    ModuleReport mr;
    for (const auto& t : l.tensors) {
      used.insert(t);
      mr.disk_bytes += ck.find(t)->nbytes();
    }
    mr.device_bytes = device_bytes_of(ck, l);
    r.parameters += l.out * l.in + (l.has_bias ? l.out : 0);
    r.device_bytes += mr.device_bytes;
    mr.layout = std::move(l);
    r.modules.push_back(std::move(mr));
  }
  for (const auto& name : ck.names()) {
    const TensorInfo& t = *ck.find(name);
    r.tensor_bytes += t.nbytes();
    files.insert(t.file);
    if (used.count(name)) continue;
    r.other.push_back({name, t.dtype, t.shape, t.nbytes()});
    r.parameters += t.numel();
    r.device_bytes += t.nbytes();
  }
  std::error_code ec;
  for (const auto& f : files) r.file_bytes += std::filesystem::file_size(f, ec);
  return r;
}

OrderedJson summary_json(const ArchSummary& a) {
  if (!a.known) return nullptr;
  OrderedJson j = {{"attention", a.attention},
                   {"dense_layers", a.dense_layers},
                   {"dense_intermediate", a.dense_intermediate},
                   {"moe_layers", a.moe_layers},
                   {"kv_elements_per_token", a.kv_elements_per_token},
                   {"kv_bytes_per_token_bf16", a.kv_elements_per_token * 2},
                   {"kv_layout", a.kv_layout}};
  if (a.moe_layers > 0) {
    j["experts"] = a.experts;
    j["top_k"] = a.top_k;
    j["expert_intermediate"] = a.expert_intermediate;
    j["shared_expert_intermediate"] = a.shared_intermediate;
    j["shared_expert_gate"] = a.shared_gate;
    j["routing"] = a.routing;
  }
  return j;
}

std::string report_json(const ModelReport& r) {
  OrderedJson modules = OrderedJson::array(), other = OrderedJson::array();
  int64_t nq = 0;
  for (const auto& m : r.modules) {
    const LinearLayout& l = m.layout;
    OrderedJson j = {{"name", l.module}, {"shape", {l.out, l.in}}, {"quantized", l.scheme.has_value()}};
    if (l.scheme) {
      ++nq;
      j["format"] = l.source_format;
      j["method"] = method_name(l.scheme->method);
      j["bits"] = l.scheme->bits;
      j["strategy"] = strategy_name(l.scheme->strategy);
      j["group_size"] = l.scheme->strategy == QuantStrategy::kGroup ? l.scheme->group_size : l.in;
      j["num_groups"] = l.num_groups;
      j["symmetric"] = l.scheme->symmetric;
      j["g_idx"] = l.has_g_idx;
      j["scale_dtype"] = dtype_name(l.dtype);
    } else {
      j["dtype"] = dtype_name(l.dtype);
    }
    j["bias"] = l.has_bias;
    j["disk_bytes"] = m.disk_bytes;
    j["device_bytes"] = m.device_bytes;
    modules.push_back(std::move(j));
  }
  for (const auto& t : r.other)
    other.push_back({{"name", t.name}, {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"bytes", t.bytes}});
  OrderedJson j = {
      {"model_dir", r.model_dir},
      {"architecture", r.architecture},
      {"model_type", r.model_type},
      {"num_layers", r.num_layers},
      {"quantization", {{"method", method_name(r.method)}, {"source", r.quant_source}}},
      {"layers", summary_json(r.summary)},
      {"modules", modules},
      {"other_tensors", other},
      {"totals",
       {{"parameters", r.parameters},
        {"quantized_modules", nq},
        {"plain_modules", static_cast<int64_t>(r.modules.size()) - nq},
        {"tensor_bytes", r.tensor_bytes},
        {"file_bytes", r.file_bytes},
        {"device_bytes", r.device_bytes}}},
  };
  return j.dump(2);
}

std::string report_text(const ModelReport& r) {
  std::string s = strformat("%s\n  architecture: %s (%s), %lld layers\n  quantization: %s (%s)\n",
                            r.model_dir.c_str(), r.architecture.empty() ? "unknown" : r.architecture.c_str(),
                            r.model_type.c_str(), static_cast<long long>(r.num_layers), method_name(r.method),
                            r.quant_source.c_str());
  const ArchSummary& a = r.summary;
  if (a.known) {
    s += strformat("  attention: %s\n", a.attention.c_str());
    if (a.moe_layers > 0) {
      s += strformat("  layers: %lld MoE (%lld experts x %lld, %s", static_cast<long long>(a.moe_layers),
                     static_cast<long long>(a.experts), static_cast<long long>(a.expert_intermediate), a.routing.c_str());
      if (a.shared_intermediate > 0)
        s += strformat("; shared expert %lld%s", static_cast<long long>(a.shared_intermediate),
                       a.shared_gate ? " with a sigmoid gate" : "");
      s += ")";
      if (a.dense_layers > 0)
        s += strformat(", %lld dense MLP %lld", static_cast<long long>(a.dense_layers),
                       static_cast<long long>(a.dense_intermediate));
      s += "\n";
    } else {
      s += strformat("  layers: %lld dense MLP %lld\n", static_cast<long long>(a.dense_layers),
                     static_cast<long long>(a.dense_intermediate));
    }
    s += strformat("  KV cache per token: %lld bytes in bf16 (%s)\n", static_cast<long long>(a.kv_elements_per_token * 2),
                   a.kv_layout.c_str());
  }
  s += "  modules:\n";
  // Per-expert modules of one projection with one layout print as one line: "...experts.{0-59}.gate_proj".
  struct Group {
    std::string text;
    long first = 0, last = 0, count = 0;
  };
  std::map<std::string, Group> groups;  // key: prefix + suffix + description
  std::vector<std::pair<std::string, std::string>> lines;  // (sort key, line or group key)
  for (const auto& m : r.modules) {
    const LinearLayout& l = m.layout;
    std::string what = l.scheme ? l.scheme->describe() + (l.has_g_idx ? " (g_idx)" : "") + ", scales " +
                                      dtype_name(l.dtype)
                                : std::string("plain ") + dtype_name(l.dtype);
    what = strformat("[%lld, %lld] %s%s", static_cast<long long>(l.out), static_cast<long long>(l.in), what.c_str(),
                     l.has_bias ? " +bias" : "");
    std::string prefix, suffix;
    long index = 0;
    if (split_expert(l.module, &prefix, &index, &suffix)) {
      const std::string key = prefix + "*" + suffix + " " + what;
      Group& g = groups[key];
      if (g.count == 0) {
        g.first = g.last = index;
        g.text = what;
        lines.push_back({l.module, "\x01" + key});
      }
      g.first = std::min(g.first, index);
      g.last = std::max(g.last, index);
      ++g.count;
      continue;
    }
    lines.push_back({l.module, strformat("    %-56s %s\n", l.module.c_str(), what.c_str())});
  }
  for (const auto& [module, line] : lines) {
    if (line[0] != '\x01') {
      s += line;
      continue;
    }
    const std::string key = line.substr(1);
    const Group& g = groups.at(key);
    const size_t star = key.find('*'), space = key.find(' ', star);
    const std::string name = key.substr(0, star) + strformat("{%ld..%ld}", g.first, g.last) + key.substr(star + 1, space - star - 1);
    s += strformat("    %-56s %s, %ld experts\n", name.c_str(), g.text.c_str(), g.count);
  }
  for (const auto& t : r.other)
    s += strformat("    %-56s %s %s\n", t.name.c_str(), dtype_name(t.dtype), shape_to_string(t.shape).c_str());
  s += strformat("  parameters: %lld (logical)\n  on disk: %llu bytes (%llu in files)\n  on the device: %llu bytes\n",
                 static_cast<long long>(r.parameters), static_cast<unsigned long long>(r.tensor_bytes),
                 static_cast<unsigned long long>(r.file_bytes), static_cast<unsigned long long>(r.device_bytes));
  return s;
}

}  // namespace nb::quant
