#include "lora/adapter.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <tuple>

#include "core/mmap.h"
#include "io/safetensors.h"

namespace nb {

namespace {

enum class Role { kA, kB, kEmbA, kEmbB, kWhole, kBaseLayer };

const char* role_name(Role r) {
  switch (r) {
    case Role::kA: return "lora_A";
    case Role::kB: return "lora_B";
    case Role::kEmbA: return "lora_embedding_A";
    case Role::kEmbB: return "lora_embedding_B";
    case Role::kWhole: return "modules_to_save weight";
    case Role::kBaseLayer: return "base_layer.weight";
  }
  return "?";
}

struct ParsedKey {
  std::string module;
  Role role = Role::kA;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Tensor name -> (module, role). PEFT prefixes keys with "base_model.model." and strips the
// adapter name ("lora_A.default.weight" -> "lora_A.weight"); files that kept the default name are
// accepted too, as is the ModulesToSaveWrapper path "<m>.modules_to_save.default.<param>".
Result<ParsedKey> parse_key(const std::string& key) {
  static const std::string kPrefix = "base_model.model.";
  std::string k = key.compare(0, kPrefix.size(), kPrefix) == 0 ? key.substr(kPrefix.size()) : key;
  struct Suffix {
    const char* text;
    Role role;
  };
  static const Suffix kSuffixes[] = {
      {".lora_A.weight", Role::kA},         {".lora_A.default.weight", Role::kA},
      {".lora_B.weight", Role::kB},         {".lora_B.default.weight", Role::kB},
      {".lora_embedding_A", Role::kEmbA},   {".lora_embedding_A.default", Role::kEmbA},
      {".lora_embedding_B", Role::kEmbB},   {".lora_embedding_B.default", Role::kEmbB},
      {".base_layer.weight", Role::kBaseLayer},
  };
  for (const Suffix& s : kSuffixes) {
    if (ends_with(k, s.text)) return ParsedKey{k.substr(0, k.size() - std::strlen(s.text)), s.role};
  }
  if (k.find(".lora_") != std::string::npos || k.rfind("lora_", 0) == 0)
    return unsupported(strformat("tensor '%s': unsupported LoRA tensor (lora_B.bias needs lora_bias, "
                                 "lora_magnitude_vector is DoRA; neither is supported)", key.c_str()));
  static const std::string kWrapper = ".modules_to_save.default.";
  if (size_t pos = k.find(kWrapper); pos != std::string::npos)
    k = k.substr(0, pos) + "." + k.substr(pos + kWrapper.size());
  if (!ends_with(k, ".weight"))
    return format_error(strformat("tensor '%s': neither a LoRA factor (lora_A/lora_B.weight, lora_embedding_A/B) "
                                  "nor a modules_to_save '.weight'", key.c_str()));
  return ParsedKey{k.substr(0, k.size() - 7), Role::kWhole};
}

// Reads element i of a possibly unaligned float buffer.
template <typename T>
T load_unaligned(const uint8_t* p, size_t i) {
  T v;
  std::memcpy(&v, p + i * sizeof(T), sizeof(T));
  return v;
}

float source_value(const TensorInfo& t, size_t i) {
  switch (t.dtype) {
    case DType::kF32: return load_unaligned<float>(t.data, i);
    case DType::kF64: return static_cast<float>(load_unaligned<double>(t.data, i));
    case DType::kBF16: return bf16_to_float(load_unaligned<uint16_t>(t.data, i));
    case DType::kF16: return fp16_to_float(load_unaligned<uint16_t>(t.data, i));
    default: NB_CHECK(false, "unreachable dtype"); return 0;
  }
}

void store_value(const HostTensor& out, size_t i, float v) {
  switch (out.dtype()) {
    case DType::kF32: out.as<float>()[i] = v; break;
    case DType::kBF16: out.as<uint16_t>()[i] = float_to_bf16(v); break;
    case DType::kF16: out.as<uint16_t>()[i] = float_to_fp16(v); break;
    default: NB_CHECK(false, "unsupported output dtype %s", dtype_name(out.dtype()));
  }
}

// Copies a 2-D tensor [rows, cols] into `dtype`, transposed to [cols, rows] when asked, refusing
// NaN/Inf. (F64 values beyond float range become Inf and are refused as well.)
Result<HostTensor> convert_2d(const TensorInfo& t, DType dtype, bool transpose) {
  const int64_t rows = t.shape[0], cols = t.shape[1];
  HostTensor out(dtype, transpose ? Shape{cols, rows} : Shape{rows, cols});
  // Same 16-bit dtype, no transpose (bf16 factors for a bf16 engine, the CUDA case): a copy and a
  // check of the exponent bits, an order of magnitude faster than converting value by value. A
  // non-finite value falls through to the loop below, which names its position.
  if (!transpose && t.dtype == dtype && (dtype == DType::kBF16 || dtype == DType::kF16)) {
    const size_t n = static_cast<size_t>(rows * cols);
    std::memcpy(out.data(), t.data, n * sizeof(uint16_t));
    const uint16_t* p = out.as<uint16_t>();
    const uint16_t exponent = dtype == DType::kBF16 ? 0x7f80 : 0x7c00;
    bool finite = true;
    for (size_t i = 0; i < n; ++i) finite &= (p[i] & exponent) != exponent;
    if (finite) return out;
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      float v = source_value(t, static_cast<size_t>(r * cols + c));
      if (!std::isfinite(v))
        return format_error(strformat("tensor '%s': non-finite value %f at [%lld, %lld]", t.name.c_str(), v,
                                      static_cast<long long>(r), static_cast<long long>(c)));
      store_value(out, static_cast<size_t>(transpose ? c * rows + r : r * cols + c), v);
    }
  }
  return out;
}

std::string describe_list(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", \"" : "\"") + v[i] + "\"";
  return s + "]";
}

// PEFT >= 0.19.1 treats a 3-D parameter [E, d1, d2] as in = d2, out = d1 (transformers 5 layout);
// 0.17.x-0.19.0 as in = d1, out = d2 (formats.md §6.5). peft_version is absent before 0.18.
bool peft_swaps_3d_in_out(const std::string& version) {
  int v[3] = {0, 0, 0};
  if (version.empty() || std::sscanf(version.c_str(), "%d.%d.%d", &v[0], &v[1], &v[2]) < 2) return false;
  return std::make_tuple(v[0], v[1], v[2]) >= std::make_tuple(0, 19, 1);
}

// An F32 host view converted to `dtype` (F32/BF16/F16).
Result<HostTensor> convert_view(const TensorView& v, DType dtype) {
  HostTensor out(dtype, v.shape);
  const float* src = v.as<float>();
  for (size_t i = 0; i < static_cast<size_t>(v.numel()); ++i) store_value(out, i, src[i]);
  return out;
}

struct Pending {
  const BaseModule* base = nullptr;
  const TensorInfo* a = nullptr;
  const TensorInfo* b = nullptr;
};

std::string rank_origin(const ModuleLoraSpec& spec) {
  if (spec.rank_key.empty()) return strformat("rank %d from r", spec.rank);
  return strformat("rank %d from rank_pattern key '%s'", spec.rank, spec.rank_key.c_str());
}

Status check_float_2d(const TensorInfo& t) {
  if (!is_float_dtype(t.dtype))
    return format_error(strformat("tensor '%s': dtype %s is not a float type (F16, BF16, F32, F64)", t.name.c_str(),
                                  dtype_name(t.dtype)));
  if (t.shape.size() != 2)
    return format_error(strformat("tensor '%s': expected a 2-D tensor, got shape %s", t.name.c_str(),
                                  shape_to_string(t.shape).c_str()));
  return Status::ok();
}

Status check_shape(const TensorInfo& t, const Shape& expected, const std::string& why) {
  NB_RETURN_IF_ERROR(check_float_2d(t));
  if (t.shape == expected) return Status::ok();
  bool transposed = t.shape == Shape{expected[1], expected[0]};
  return format_error(strformat("tensor '%s': expected shape %s (%s), got %s%s", t.name.c_str(),
                                shape_to_string(expected).c_str(), why.c_str(), shape_to_string(t.shape).c_str(),
                                transposed ? " (transposed?)" : ""));
}

class Loader {
 public:
  Loader(const AdapterConfig& config, const std::vector<BaseModule>& base, DType dtype)
      : config_(config), base_(base), dtype_(dtype) {}

  Status index_base();
  Status classify(const TensorInfo& t);
  Status finish(LoraAdapter* out);

 private:
  Status add_factor(const TensorInfo& t, const ParsedKey& key, const BaseModule& m);
  Status add_whole(const TensorInfo& t, const BaseModule& m);
  Status add_base_layer(const TensorInfo& t, const BaseModule& m);
  Result<LoraModule> build_module(const std::string& name, const Pending& p);
  // Fused expert parameters: "<experts module>(.base_layer)*" -> the parameter PEFT wrapped there.
  Result<const BaseModule*> expert_param_of(const TensorInfo& t, const std::string& module);
  Status build_expert_param(const BaseModule& m, const Pending& p, LoraAdapter* out);

  const AdapterConfig& config_;
  const std::vector<BaseModule>& base_;
  DType dtype_;
  std::map<std::string, const BaseModule*> by_name_;
  // experts module -> its fused parameters, by param_index
  std::map<std::string, std::vector<const BaseModule*>> experts_modules_;
  std::map<std::string, Pending> factors_;
  std::map<std::string, const TensorInfo*> whole_;
  std::map<std::string, const TensorInfo*> base_layer_;
};

// Hugging Face weight layouts: Linear [out, in]; nn.Embedding [num_embeddings, embedding_dim].
Status check_full_weight(const TensorInfo& t, const BaseModule& m) {
  Shape expected = m.is_linear() ? Shape{m.out, m.in} : Shape{m.in, m.out};
  return check_shape(t, expected, strformat("%s '%s' weight", base_module_kind_name(m.kind), m.name.c_str()));
}

Status Loader::index_base() {
  for (const BaseModule& m : base_) {
    if (m.out <= 0 || m.in <= 0)
      return invalid_argument(strformat("base module '%s': logical shape out=%lld, in=%lld must be positive",
                                        m.name.c_str(), static_cast<long long>(m.out), static_cast<long long>(m.in)));
    if (!by_name_.emplace(m.name, &m).second)
      return invalid_argument(strformat("base module '%s' is listed twice", m.name.c_str()));
    if (m.is_expert_param()) {
      auto& params = experts_modules_[m.experts_module];
      params.push_back(&m);
      std::sort(params.begin(), params.end(),
                [](const BaseModule* a, const BaseModule* b) { return a->param_index < b->param_index; });
    }
  }
  return Status::ok();
}

// PEFT nests one ParamWrapper per targeted parameter of a module, wrapping them in the module's
// parameter order: of n targeted parameters, the i-th (0 = first wrapped, innermost) has its
// factors under "<module>" + (n - 1 - i) x ".base_layer".
Result<const BaseModule*> Loader::expert_param_of(const TensorInfo& t, const std::string& module) {
  std::string base = module;
  int depth = 0;
  static const std::string kBase = ".base_layer";
  while (base.size() > kBase.size() && base.compare(base.size() - kBase.size(), kBase.size(), kBase) == 0) {
    base.resize(base.size() - kBase.size());
    ++depth;
  }
  auto it = experts_modules_.find(base);
  if (it == experts_modules_.end()) return nullptr;
  std::vector<const BaseModule*> targeted;
  for (const BaseModule* p : it->second)
    if (is_targeted(config_, *p)) targeted.push_back(p);
  if (targeted.empty())
    return format_error(strformat("tensor '%s': LoRA factors on the fused experts '%s', but %s targets none of its "
                                  "parameters (target_parameters %s)", t.name.c_str(), base.c_str(),
                                  config_.source.c_str(), describe_list(config_.target_parameters).c_str()));
  const int n = static_cast<int>(targeted.size());
  if (depth >= n)
    return format_error(strformat("tensor '%s': %d '.base_layer' levels under '%s', but only %d of its parameters are "
                                  "targeted (at most %d levels)", t.name.c_str(), depth, base.c_str(), n, n - 1));
  return targeted[static_cast<size_t>(n - 1 - depth)];
}

Status Loader::classify(const TensorInfo& t) {
  NB_ASSIGN_OR_RETURN(ParsedKey key, parse_key(t.name));
  auto it = by_name_.find(key.module);
  if (it == by_name_.end() && (key.role == Role::kA || key.role == Role::kB)) {
    NB_ASSIGN_OR_RETURN(const BaseModule* param, expert_param_of(t, key.module));
    if (param) return add_factor(t, key, *param);
  }
  if (it == by_name_.end()) {
    const bool experts = key.module.find(".experts.") != std::string::npos || ends_with(key.module, ".experts") ||
                         key.module.find(".experts.base_layer") != std::string::npos;
    const bool any_experts = !experts_modules_.empty();
    if (experts && !any_experts)
      return format_error(strformat("tensor '%s': module '%s' is a mixture-of-experts module, but the base model has "
                                    "no experts (a dense model): this adapter was trained for another model",
                                    t.name.c_str(), key.module.c_str()));
    return format_error(strformat("tensor '%s': module '%s' is not a LoRA-able module of the base model%s",
                                  t.name.c_str(), key.module.c_str(),
                                  experts ? " (an expert index beyond the model's experts, or another model's layout?)"
                                          : ""));
  }
  if (key.role == Role::kWhole) return add_whole(t, *it->second);
  if (key.role == Role::kBaseLayer) return add_base_layer(t, *it->second);
  return add_factor(t, key, *it->second);
}

Status Loader::add_factor(const TensorInfo& t, const ParsedKey& key, const BaseModule& m) {
  bool embedding_role = key.role == Role::kEmbA || key.role == Role::kEmbB;
  if (embedding_role != m.is_embedding())
    return format_error(strformat("tensor '%s': a %s factor, but module '%s' is a%s %s", t.name.c_str(),
                                  role_name(key.role), m.name.c_str(), m.is_linear() ? "" : "n",
                                  base_module_kind_name(m.kind)));
  if (!is_targeted(config_, m))
    return format_error(strformat("tensor '%s': module '%s' is not targeted by %s (target_modules %s); the config "
                                  "and the weights disagree", t.name.c_str(), m.name.c_str(), config_.source.c_str(),
                                  config_.target_modules.describe().c_str()));
  Pending& p = factors_[m.name];
  p.base = &m;
  const TensorInfo*& slot = (key.role == Role::kA || key.role == Role::kEmbA) ? p.a : p.b;
  if (slot) return format_error(strformat("tensor '%s': duplicate %s for module '%s' (also '%s')", t.name.c_str(),
                                          role_name(key.role), m.name.c_str(), slot->name.c_str()));
  slot = &t;
  return Status::ok();
}

Status Loader::add_whole(const TensorInfo& t, const BaseModule& m) {
  if (!is_module_to_save(config_, m.name))
    return format_error(strformat("tensor '%s': a whole weight for module '%s', which is not in modules_to_save",
                                  t.name.c_str(), m.name.c_str()));
  if (!whole_.emplace(m.name, &t).second)
    return format_error(strformat("tensor '%s': duplicate modules_to_save weight for module '%s' (also '%s')",
                                  t.name.c_str(), m.name.c_str(), whole_[m.name]->name.c_str()));
  return check_full_weight(t, m);
}

Status Loader::add_base_layer(const TensorInfo& t, const BaseModule& m) {
  if (!is_targeted(config_, m))
    return format_error(strformat("tensor '%s': base_layer weight for module '%s', which %s does not target "
                                  "(target_modules %s)", t.name.c_str(), m.name.c_str(), config_.source.c_str(),
                                  config_.target_modules.describe().c_str()));
  base_layer_.emplace(m.name, &t);  // names are unique within a checkpoint
  return check_full_weight(t, m);
}

Result<LoraModule> Loader::build_module(const std::string& name, const Pending& p) {
  const BaseModule& m = *p.base;
  bool emb = m.is_embedding();
  if (!p.a || !p.b) {
    const TensorInfo* have = p.a ? p.a : p.b;
    return format_error(strformat("tensor '%s': module '%s' has %s but no %s", have->name.c_str(), name.c_str(),
                                  role_name(p.a ? (emb ? Role::kEmbA : Role::kA) : (emb ? Role::kEmbB : Role::kB)),
                                  role_name(p.a ? (emb ? Role::kEmbB : Role::kB) : (emb ? Role::kEmbA : Role::kA))));
  }
  ModuleLoraSpec spec = lora_spec_for(config_, name);
  const int64_t r = spec.rank;
  // PEFT: Linear lora_A [r, in], lora_B [out, r]; Embedding lora_embedding_A [r, num_embeddings],
  // lora_embedding_B [embedding_dim, r] with num_embeddings = m.in, embedding_dim = m.out.
  const long long in = m.in, out = m.out;
  std::string rank_why = rank_origin(spec);
  NB_RETURN_IF_ERROR(check_shape(*p.a, {r, m.in},
                                 strformat("%s, %s %lld", rank_why.c_str(), emb ? "num_embeddings" : "in", in)));
  NB_RETURN_IF_ERROR(check_shape(*p.b, {m.out, r},
                                 strformat("%s %lld, %s", emb ? "embedding_dim" : "out", out, rank_why.c_str())));
  LoraModule lm;
  lm.module = name;
  lm.kind = m.kind;
  lm.rank = spec.rank;
  lm.alpha = static_cast<float>(spec.alpha);
  lm.scaling = spec.scaling;
  NB_ASSIGN_OR_RETURN(lm.a, convert_2d(*p.a, dtype_, /*transpose=*/emb));
  NB_ASSIGN_OR_RETURN(lm.b, convert_2d(*p.b, dtype_, /*transpose=*/false));
  return lm;
}

// A fused 3-D expert parameter's factors (PEFT ParamWrapper): lora_A [r*E, a], lora_B [b, r*E] with
// expert e's A rows [e*r, (e+1)*r) (expert-major) and B columns j*E + e (expert-minor). With PEFT >=
// 0.19.1, (a, b) = (in, out) and ΔW_e = B_e A_e; before, (a, b) = (out, in) and ΔW_e = (B_e A_e)^T,
// i.e. shrink with B_e^T and expand with A_e^T. Each expert's factors become per-expert LoraModules
// (one per output slice: gate_up_proj -> gate_proj rows [0, I), up_proj rows [I, 2I)), so both
// adapter layouts install identically.
Status Loader::build_expert_param(const BaseModule& m, const Pending& p, LoraAdapter* out) {
  if (!p.a || !p.b) {
    const TensorInfo* have = p.a ? p.a : p.b;
    return format_error(strformat("tensor '%s': fused expert parameter '%s' has %s but no %s", have->name.c_str(),
                                  m.name.c_str(), p.a ? "lora_A" : "lora_B", p.a ? "lora_B" : "lora_A"));
  }
  NB_RETURN_IF_ERROR(check_float_2d(*p.a));
  NB_RETURN_IF_ERROR(check_float_2d(*p.b));
  ModuleLoraSpec spec = lora_spec_for(config_, m.name);
  const int64_t r = spec.rank, e_count = m.num_experts, re = r * e_count;
  const bool swapped = peft_swaps_3d_in_out(config_.peft_version);
  const Shape new_a{re, m.in}, new_b{m.out, re}, old_a{re, m.out}, old_b{m.in, re};
  const bool fits_new = p.a->shape == new_a && p.b->shape == new_b;
  const bool fits_old = p.a->shape == old_a && p.b->shape == old_b;
  const std::string why = strformat("%s, %lld experts, expert weight [out %lld, in %lld]", rank_origin(spec).c_str(),
                                    static_cast<long long>(e_count), static_cast<long long>(m.out),
                                    static_cast<long long>(m.in));
  const std::string version = config_.peft_version.empty() ? "absent (PEFT < 0.18)" : "'" + config_.peft_version + "'";
  if (swapped ? !fits_new : !fits_old) {
    const Shape& wa = swapped ? new_a : old_a;
    const Shape& wb = swapped ? new_b : old_b;
    const bool other = swapped ? fits_old : fits_new;
    return format_error(strformat(
        "fused expert parameter '%s': lora_A '%s' %s and lora_B '%s' %s; expected %s and %s (%s; peft_version %s, "
        "whose layout is %s)%s", m.name.c_str(), p.a->name.c_str(), shape_to_string(p.a->shape).c_str(),
        p.b->name.c_str(), shape_to_string(p.b->shape).c_str(), shape_to_string(wa).c_str(),
        shape_to_string(wb).c_str(), why.c_str(), version.c_str(),
        swapped ? "in = last dim (PEFT >= 0.19.1)" : "in = middle dim (PEFT < 0.19.1)",
        other ? "; the shapes are those of the other PEFT layout: peft_version does not match the file" : ""));
  }
  NB_ASSIGN_OR_RETURN(HostTensor a, convert_2d(*p.a, DType::kF32, false));
  NB_ASSIGN_OR_RETURN(HostTensor b, convert_2d(*p.b, DType::kF32, false));
  const float* af = a.as<float>();
  const float* bf = b.as<float>();
  const int64_t in = m.in, a_cols = p.a->shape[1], b_cols = re;
  for (int64_t e = 0; e < e_count; ++e) {
    // shrink [r, in] and expand [out, r] of expert e, in F32
    std::vector<float> shrink(static_cast<size_t>(r * in)), expand(static_cast<size_t>(m.out * r));
    for (int64_t i = 0; i < r; ++i) {
      for (int64_t k = 0; k < in; ++k)
        shrink[static_cast<size_t>(i * in + k)] = swapped ? af[(e * r + i) * a_cols + k] : bf[k * b_cols + i * e_count + e];
      for (int64_t o = 0; o < m.out; ++o)
        expand[static_cast<size_t>(o * r + i)] = swapped ? bf[o * b_cols + i * e_count + e] : af[(e * r + i) * a_cols + o];
    }
    int64_t row = 0;
    for (const ExpertSlice& sl : m.slices) {
      LoraModule lm;
      lm.module = m.expert_prefix + std::to_string(e) + "." + sl.name;
      lm.kind = BaseModule::Kind::kLinear;
      lm.rank = spec.rank;
      lm.alpha = static_cast<float>(spec.alpha);
      lm.scaling = spec.scaling;
      TensorView sv{shrink.data(), DType::kF32, {r, in}, {}, Device::kCpu};
      TensorView ev{expand.data() + row * r, DType::kF32, {sl.rows, r}, {}, Device::kCpu};
      NB_ASSIGN_OR_RETURN(lm.a, convert_view(sv, dtype_));
      NB_ASSIGN_OR_RETURN(lm.b, convert_view(ev, dtype_));
      row += sl.rows;
      if (!out->modules.emplace(lm.module, std::move(lm)).second)
        return format_error(strformat("module '%s' has LoRA factors both as a per-expert module and inside the fused "
                                      "expert parameter '%s'", (m.expert_prefix + std::to_string(e) + "." + sl.name).c_str(),
                                      m.name.c_str()));
    }
  }
  return Status::ok();
}

Status Loader::finish(LoraAdapter* out) {
  for (const auto& [name, p] : factors_) {
    if (p.base->is_expert_param()) {
      NB_RETURN_IF_ERROR(build_expert_param(*p.base, p, out));
      continue;
    }
    NB_ASSIGN_OR_RETURN(LoraModule lm, build_module(name, p));
    if (!out->modules.emplace(name, std::move(lm)).second)
      return format_error(strformat("module '%s' has LoRA factors both as a per-expert module and inside a fused expert "
                                    "parameter", name.c_str()));
  }
  // PEFT saves every modules_to_save module it wrapped: a missing one means a truncated file.
  for (const BaseModule& m : base_) {
    if (!is_module_to_save(config_, m.name)) continue;
    auto it = whole_.find(m.name);
    if (it == whole_.end())
      return format_error(strformat("module '%s' is in modules_to_save but the weights hold no '%s.weight'",
                                    m.name.c_str(), m.name.c_str()));
    // Whole weights keep the base layer's own layout and are converted like the factors.
    NB_ASSIGN_OR_RETURN(HostTensor w, convert_2d(*it->second, dtype_, false));
    out->modules_to_save.emplace(m.name, std::move(w));
  }
  for (const auto& [name, t] : base_layer_) {
    if (!out->modules.count(name))
      return format_error(strformat("tensor '%s': base_layer weight for module '%s', which has no LoRA factors",
                                    t->name.c_str(), name.c_str()));
    NB_ASSIGN_OR_RETURN(HostTensor w, convert_2d(*t, dtype_, false));
    out->base_layer_weights.emplace(name, std::move(w));
  }
  if (out->modules.empty() && out->modules_to_save.empty())
    return format_error("no LoRA or modules_to_save tensors for any module of the base model");
  return Status::ok();
}

Result<LoraAdapter> load_adapter_impl(const std::string& name, const std::string& dir,
                                      const std::vector<BaseModule>& base, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16)
    return invalid_argument(strformat("adapter dtype %s: expected F32, BF16 or F16", dtype_name(dtype)));
  if (!is_directory(dir)) return not_found(strformat("%s: adapter directory not found", dir.c_str()));
  LoraAdapter adapter;
  adapter.name = name;
  adapter.dir = dir;
  NB_ASSIGN_OR_RETURN(adapter.config, read_adapter_config(path_join(dir, kAdapterConfigFile)));
  std::string weights = path_join(dir, kAdapterWeightsFile);
  if (!file_exists(weights)) {
    if (file_exists(path_join(dir, "adapter_model.bin")))
      return unsupported(weights + " not found; adapter_model.bin (pickle) is not supported, save with "
                                   "safe_serialization=True");
    return not_found(weights + ": adapter weights not found");
  }
  NB_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::open_file(weights));
  Loader loader(adapter.config, base, dtype);
  NB_RETURN_IF_ERROR(loader.index_base());
  for (const std::string& tname : ckpt.names()) {
    NB_ASSIGN_OR_RETURN(const TensorInfo* t, ckpt.get(tname));
    NB_RETURN_IF_ERROR(loader.classify(*t));
  }
  NB_RETURN_IF_ERROR(loader.finish(&adapter));
  return adapter;
}

}  // namespace

size_t LoraAdapter::bytes() const {
  size_t n = 0;
  for (const auto& [_, m] : modules) n += m.a.nbytes() + m.b.nbytes();
  for (const auto& [_, w] : modules_to_save) n += w.nbytes();
  for (const auto& [_, w] : base_layer_weights) n += w.nbytes();
  return n;
}

int LoraAdapter::max_rank() const {
  int r = 0;
  for (const auto& [_, m] : modules) r = std::max(r, m.rank);
  return r;
}

Result<LoraAdapter> load_adapter(const std::string& name, const std::string& dir, const std::vector<BaseModule>& base,
                                 DType dtype) {
  Result<LoraAdapter> r = load_adapter_impl(name, dir, base, dtype);
  if (!r.is_ok()) return r.status().with_context(strformat("adapter '%s'", name.c_str()));
  return r;
}

}  // namespace nb
