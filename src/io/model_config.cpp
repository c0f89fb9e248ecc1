#include "io/model_config.h"

#include <algorithm>
#include <cmath>

#include "core/mmap.h"
#include "io/json_util.h"

namespace nb {

namespace {

// Per-architecture names and the transformers config-class defaults that differ between families.
struct Family {
  Arch arch;
  const char* name;
  const char* model_types[2];  // accepted `model_type` values (nullptr-terminated)
  double rms_norm_eps;
  int64_t max_position_embeddings;
  double rope_theta;
};

constexpr Family kFamilies[] = {
    {Arch::kLlama, "LlamaForCausalLM", {"llama", nullptr}, 1e-6, 2048, 10000.0},
    {Arch::kMistral, "MistralForCausalLM", {"mistral", nullptr}, 1e-6, 4096 * 32, 10000.0},
    {Arch::kQwen2, "Qwen2ForCausalLM", {"qwen2", nullptr}, 1e-6, 32768, 10000.0},
    {Arch::kQwen3, "Qwen3ForCausalLM", {"qwen3", nullptr}, 1e-6, 32768, 10000.0},
    {Arch::kMixtral, "MixtralForCausalLM", {"mixtral", nullptr}, 1e-5, 4096 * 32, 1e6},
    {Arch::kQwen2Moe, "Qwen2MoeForCausalLM", {"qwen2_moe", nullptr}, 1e-6, 32768, 10000.0},
    {Arch::kQwen3Moe, "Qwen3MoeForCausalLM", {"qwen3_moe", nullptr}, 1e-6, 32768, 10000.0},
    {Arch::kDeepseekV3, "DeepseekV3ForCausalLM", {"deepseek_v3", "kimi_k2"}, 1e-6, 4096, 10000.0},
};

const Family& family(Arch a) { return kFamilies[static_cast<int>(a)]; }

std::string supported_arch_list() {
  std::string s;
  for (const Family& f : kFamilies) {
    if (!s.empty()) s += ", ";
    s += f.name;
  }
  return s;
}

Status field_error(const std::string& source, const std::string& field, const std::string& expected,
                   const std::string& got) {
  return format_error(strformat("%s: field '%s': expected %s, got %s", source.c_str(), field.c_str(),
                                expected.c_str(), got.c_str()));
}

std::string num(double v) { return strformat("%g", v); }
std::string num(int64_t v) { return std::to_string(v); }

// architectures[0], cross-checked with model_type (either may be absent, not both).
Result<Arch> resolve_arch(const JsonObject& root, ModelConfig* c) {
  NB_ASSIGN_OR_RETURN(c->model_type, root.string_or("model_type", ""));
  NB_ASSIGN_OR_RETURN(std::vector<std::string> archs, root.string_list_or_empty("architectures"));
  if (archs.empty()) {
    for (const Family& f : kFamilies)
      for (const char* mt : f.model_types)
        if (mt && c->model_type == mt) {
          c->architecture = f.name;
          return f.arch;
        }
    return unsupported(strformat("%s: no 'architectures' and model_type '%s' is not one of the supported "
                                 "architectures (%s)",
                                 root.source().c_str(), c->model_type.c_str(), supported_arch_list().c_str()));
  }
  c->architecture = archs[0];
  Result<Arch> arch = parse_arch(archs[0]);
  if (!arch.is_ok()) return arch.status().with_context(root.source() + ": ");
  const Family& f = family(*arch);
  bool ok = c->model_type.empty();
  for (const char* mt : f.model_types) ok = ok || (mt && c->model_type == mt);
  if (!ok)
    return field_error(root.source(), "model_type", strformat("\"%s\" for %s", f.model_types[0], f.name),
                       "\"" + c->model_type + "\"");
  return *arch;
}

Status read_sizes(const JsonObject& root, const Family& fam, ModelConfig* c) {
  NB_ASSIGN_OR_RETURN(c->vocab_size, root.int_at("vocab_size"));
  NB_ASSIGN_OR_RETURN(c->hidden_size, root.int_at("hidden_size"));
  NB_ASSIGN_OR_RETURN(c->intermediate_size, root.int_at("intermediate_size"));
  NB_ASSIGN_OR_RETURN(c->num_hidden_layers, root.int_at("num_hidden_layers"));
  NB_ASSIGN_OR_RETURN(c->num_attention_heads, root.int_at("num_attention_heads"));
  NB_ASSIGN_OR_RETURN(c->num_key_value_heads, root.int_or("num_key_value_heads", c->num_attention_heads));
  NB_ASSIGN_OR_RETURN(c->hidden_act, root.string_or("hidden_act", "silu"));
  NB_ASSIGN_OR_RETURN(c->rms_norm_eps, root.number_or("rms_norm_eps", fam.rms_norm_eps));
  NB_ASSIGN_OR_RETURN(c->max_position_embeddings, root.int_or("max_position_embeddings", fam.max_position_embeddings));
  NB_ASSIGN_OR_RETURN(c->tie_word_embeddings, root.bool_or("tie_word_embeddings", false));
  if (c->hidden_act != "silu")
    return unsupported(strformat("%s: field 'hidden_act': expected \"silu\" (the only supported activation), got \"%s\"",
                                 root.source().c_str(), c->hidden_act.c_str()));
  return Status::ok();
}

// head_dim: explicit, or hidden / heads (which must then divide evenly).
Status read_head_dim(const JsonObject& root, ModelConfig* c) {
  if (root.has("head_dim")) {
    NB_ASSIGN_OR_RETURN(c->head_dim, root.int_at("head_dim"));
    return Status::ok();
  }
  if (c->num_attention_heads <= 0)
    return field_error(root.source(), "num_attention_heads", "a positive integer", num(c->num_attention_heads));
  if (c->hidden_size % c->num_attention_heads != 0)
    return field_error(root.source(), "num_attention_heads",
                       strformat("a divisor of hidden_size %lld (head_dim is not given)",
                                 static_cast<long long>(c->hidden_size)),
                       num(c->num_attention_heads));
  c->head_dim = c->hidden_size / c->num_attention_heads;
  return Status::ok();
}

Status read_tokens_and_dtype(const JsonObject& root, ModelConfig* c) {
  NB_ASSIGN_OR_RETURN(c->bos_token_id, root.int_or("bos_token_id", -1));
  NB_ASSIGN_OR_RETURN(c->eos_token_ids, root.int_or_int_list("eos_token_id"));
  const char* key = root.has("dtype") ? "dtype" : "torch_dtype";  // transformers v5 renamed it
  NB_ASSIGN_OR_RETURN(c->torch_dtype, root.string_or(key, ""));
  return Status::ok();
}

}  // namespace

// ---- RoPE ---------------------------------------------------------------------------------------

namespace {

Status read_rope_variant(const JsonObject& r, RopeScaling* s) {
  const std::string& t = s->type;
  if (t == "default") return Status::ok();
  if (t == "longrope" || t == "su")
    return unsupported(r.where("rope_type") + ": longrope (Phi-3 style) is not supported");
  if (t != "linear" && t != "dynamic" && t != "llama3" && t != "yarn")
    return unsupported(strformat("%s: expected one of default, linear, dynamic, llama3, yarn, got \"%s\"",
                                 r.where("rope_type").c_str(), t.c_str()));
  NB_ASSIGN_OR_RETURN(s->factor, r.number_at("factor"));
  if (!(s->factor > 0)) return format_error(r.where("factor") + ": expected a positive number, got " + num(s->factor));
  if (t == "llama3") {
    NB_ASSIGN_OR_RETURN(s->low_freq_factor, r.number_at("low_freq_factor"));
    NB_ASSIGN_OR_RETURN(s->high_freq_factor, r.number_at("high_freq_factor"));
    NB_ASSIGN_OR_RETURN(s->original_max_position_embeddings, r.int_at("original_max_position_embeddings"));
    if (!(s->high_freq_factor > s->low_freq_factor) || !(s->low_freq_factor > 0))
      return format_error(strformat("%s: expected 0 < low_freq_factor < high_freq_factor, got %g and %g",
                                    r.where("high_freq_factor").c_str(), s->low_freq_factor, s->high_freq_factor));
    if (s->original_max_position_embeddings <= 0)
      return format_error(r.where("original_max_position_embeddings") + ": expected a positive integer, got " +
                          num(s->original_max_position_embeddings));
  }
  if (t == "yarn") {
    NB_ASSIGN_OR_RETURN(s->original_max_position_embeddings, r.int_or("original_max_position_embeddings", 0));
    NB_ASSIGN_OR_RETURN(s->beta_fast, r.number_or("beta_fast", 32.0));
    NB_ASSIGN_OR_RETURN(s->beta_slow, r.number_or("beta_slow", 1.0));
    NB_ASSIGN_OR_RETURN(s->mscale, r.number_or("mscale", 0.0));
    NB_ASSIGN_OR_RETURN(s->mscale_all_dim, r.number_or("mscale_all_dim", 0.0));
    NB_ASSIGN_OR_RETURN(s->attention_factor, r.number_or("attention_factor", 0.0));
    NB_ASSIGN_OR_RETURN(s->truncate, r.bool_or("truncate", true));
    if (s->original_max_position_embeddings < 0)
      return format_error(r.where("original_max_position_embeddings") + ": expected a positive integer, got " +
                          num(s->original_max_position_embeddings));
    if (!(s->beta_fast > s->beta_slow))
      return format_error(strformat("%s: expected beta_fast > beta_slow, got %g and %g", r.where("beta_fast").c_str(),
                                    s->beta_fast, s->beta_slow));
  }
  return Status::ok();
}

// rope_theta and rope_scaling (v4) or rope_parameters (v5, which also holds rope_theta and may hold
// partial_rotary_factor). `type` is the legacy spelling of `rope_type`.
Status read_rope(const JsonObject& root, const Family& fam, ModelConfig* c) {
  NB_ASSIGN_OR_RETURN(c->rope_theta, root.number_or("rope_theta", fam.rope_theta));
  NB_ASSIGN_OR_RETURN(c->partial_rotary_factor, root.number_or("partial_rotary_factor", 1.0));
  const bool v5 = root.has("rope_parameters");
  if (!v5 && !root.has("rope_scaling")) return Status::ok();
  NB_ASSIGN_OR_RETURN(JsonObject r, root.object_at(v5 ? "rope_parameters" : "rope_scaling"));
  if (v5) {
    NB_ASSIGN_OR_RETURN(c->rope_theta, r.number_or("rope_theta", c->rope_theta));
    NB_ASSIGN_OR_RETURN(c->partial_rotary_factor, r.number_or("partial_rotary_factor", c->partial_rotary_factor));
  }
  if (r.has("rope_type")) {
    NB_ASSIGN_OR_RETURN(c->rope_scaling.type, r.string_at("rope_type"));
  } else if (r.has("type")) {
    NB_ASSIGN_OR_RETURN(c->rope_scaling.type, r.string_at("type"));
  } else if (!v5) {
    return format_error(r.where("rope_type") + ": missing (required in rope_scaling; legacy spelling 'type')");
  }
  return read_rope_variant(r, &c->rope_scaling);
}

}  // namespace

// ---- attention flags, MoE, DeepSeek ----------------------------------------------------------------

namespace {

Status read_attention(const JsonObject& root, ModelConfig* c) {
  NB_ASSIGN_OR_RETURN(c->attention_bias, root.bool_or("attention_bias", false));
  const Arch a = c->arch;
  if (a == Arch::kLlama) {
    NB_ASSIGN_OR_RETURN(c->mlp_bias, root.bool_or("mlp_bias", false));
  }
  if (a == Arch::kLlama || a == Arch::kQwen3 || a == Arch::kQwen3Moe || a == Arch::kDeepseekV3) {
    c->qkv_bias = c->o_bias = c->attention_bias;
  } else if (a == Arch::kQwen2) {
    c->qkv_bias = true;  // Qwen2 attention: q/k/v always biased, o_proj never
  } else if (a == Arch::kQwen2Moe) {
    NB_ASSIGN_OR_RETURN(c->qkv_bias, root.bool_or("qkv_bias", true));
  }
  c->qk_norm = a == Arch::kQwen3 || a == Arch::kQwen3Moe;

  NB_ASSIGN_OR_RETURN(c->sliding_window, root.int_or("sliding_window", 0));
  NB_ASSIGN_OR_RETURN(c->use_sliding_window, root.bool_or("use_sliding_window", false));
  const bool qwen = a == Arch::kQwen2 || a == Arch::kQwen3 || a == Arch::kQwen2Moe || a == Arch::kQwen3Moe;
  NB_ASSIGN_OR_RETURN(c->max_window_layers, root.int_or("max_window_layers", qwen ? 28 : 0));
  NB_ASSIGN_OR_RETURN(c->layer_types, root.string_list_or_empty("layer_types"));
  if (c->sliding_window < 0)
    return field_error(root.source(), "sliding_window", "a non-negative integer or null", num(c->sliding_window));
  if (qwen && !c->use_sliding_window) c->sliding_window = 0;  // transformers drops it likewise
  if (a == Arch::kMistral || a == Arch::kMixtral) c->use_sliding_window = c->sliding_window > 0;
  if (a == Arch::kLlama || a == Arch::kDeepseekV3) {
    c->sliding_window = 0;
    c->use_sliding_window = false;
  }
  return Status::ok();
}

// Qwen MoE configs name the expert count `num_experts`; transformers v5 maps it to num_local_experts.
Result<int64_t> expert_count(const JsonObject& root, int64_t fallback) {
  if (root.has("num_experts")) return root.int_at("num_experts");
  return root.int_or("num_local_experts", fallback);
}

Status read_mixtral(const JsonObject& root, ModelConfig* c) {
  NB_ASSIGN_OR_RETURN(c->num_experts, root.int_or("num_local_experts", 8));
  NB_ASSIGN_OR_RETURN(c->num_experts_per_tok, root.int_or("num_experts_per_tok", 2));
  c->moe_intermediate_size = c->intermediate_size;
  c->norm_topk_prob = true;  // Mixtral always renormalises the top-k weights
  return Status::ok();
}

// Qwen2-MoE and Qwen3-MoE share the router and layer selection; only Qwen2-MoE has a shared expert.
Status read_qwen_moe(const JsonObject& root, ModelConfig* c) {
  const bool q2 = c->arch == Arch::kQwen2Moe;
  NB_ASSIGN_OR_RETURN(c->num_experts, expert_count(root, q2 ? 60 : 128));
  NB_ASSIGN_OR_RETURN(c->num_experts_per_tok, root.int_or("num_experts_per_tok", q2 ? 4 : 8));
  NB_ASSIGN_OR_RETURN(c->moe_intermediate_size, root.int_or("moe_intermediate_size", q2 ? 1408 : 768));
  if (q2) {
    NB_ASSIGN_OR_RETURN(c->shared_expert_intermediate_size, root.int_or("shared_expert_intermediate_size", 5632));
  }
  NB_ASSIGN_OR_RETURN(c->norm_topk_prob, root.bool_or("norm_topk_prob", false));
  NB_ASSIGN_OR_RETURN(c->decoder_sparse_step, root.int_or("decoder_sparse_step", 1));
  NB_ASSIGN_OR_RETURN(c->mlp_only_layers, root.int_list_or_empty("mlp_only_layers"));
  return Status::ok();
}

Status read_deepseek_routing(const JsonObject& root, ModelConfig* c) {
  NB_ASSIGN_OR_RETURN(c->n_routed_experts, root.int_or("n_routed_experts", 256));
  NB_ASSIGN_OR_RETURN(c->n_shared_experts, root.int_or("n_shared_experts", 1));
  NB_ASSIGN_OR_RETURN(c->num_experts_per_tok, root.int_or("num_experts_per_tok", 8));
  NB_ASSIGN_OR_RETURN(c->moe_intermediate_size, root.int_or("moe_intermediate_size", 2048));
  NB_ASSIGN_OR_RETURN(c->routed_scaling_factor, root.number_or("routed_scaling_factor", 2.5));
  NB_ASSIGN_OR_RETURN(c->n_group, root.int_or("n_group", 8));
  NB_ASSIGN_OR_RETURN(c->topk_group, root.int_or("topk_group", 4));
  NB_ASSIGN_OR_RETURN(c->first_k_dense_replace, root.int_or("first_k_dense_replace", 3));
  NB_ASSIGN_OR_RETURN(c->norm_topk_prob, root.bool_or("norm_topk_prob", true));
  NB_ASSIGN_OR_RETURN(c->moe_layer_freq, root.int_or("moe_layer_freq", 1));
  NB_ASSIGN_OR_RETURN(c->topk_method, root.string_or("topk_method", ""));
  NB_ASSIGN_OR_RETURN(c->scoring_func, root.string_or("scoring_func", ""));
  if (!c->topk_method.empty() && c->topk_method != "noaux_tc")
    return unsupported(root.where("topk_method") + ": expected \"noaux_tc\", got \"" + c->topk_method + "\"");
  if (!c->scoring_func.empty() && c->scoring_func != "sigmoid")
    return unsupported(root.where("scoring_func") + ": expected \"sigmoid\", got \"" + c->scoring_func + "\"");
  c->num_experts = c->n_routed_experts;
  c->shared_expert_intermediate_size = c->moe_intermediate_size * c->n_shared_experts;
  return Status::ok();
}

Status read_deepseek(const JsonObject& root, ModelConfig* c) {
  NB_RETURN_IF_ERROR(read_deepseek_routing(root, c));
  NB_ASSIGN_OR_RETURN(c->kv_lora_rank, root.int_or("kv_lora_rank", 512));
  // q_lora_rank: absent → 1536 (the class default); null → 0 (plain q_proj).
  auto q = root.json().find("q_lora_rank");
  if (q != root.json().end() && q->is_null()) {
    c->q_lora_rank = 0;
  } else {
    NB_ASSIGN_OR_RETURN(c->q_lora_rank, root.int_or("q_lora_rank", 1536));
  }
  NB_ASSIGN_OR_RETURN(c->qk_rope_head_dim, root.int_or("qk_rope_head_dim", 64));
  NB_ASSIGN_OR_RETURN(c->qk_nope_head_dim, root.int_or("qk_nope_head_dim", 128));
  NB_ASSIGN_OR_RETURN(c->v_head_dim, root.int_or("v_head_dim", 128));
  NB_ASSIGN_OR_RETURN(c->rope_interleave, root.bool_or("rope_interleave", true));
  c->head_dim = c->qk_nope_head_dim + c->qk_rope_head_dim;
  return Status::ok();
}

}  // namespace

// ---- validation -----------------------------------------------------------------------------------

namespace {

Status check_positive(const std::string& src, const char* field, int64_t v) {
  return v > 0 ? Status::ok() : field_error(src, field, "a positive integer", num(v));
}

Status validate_common(const std::string& src, ModelConfig* c) {
  NB_RETURN_IF_ERROR(check_positive(src, "vocab_size", c->vocab_size));
  NB_RETURN_IF_ERROR(check_positive(src, "hidden_size", c->hidden_size));
  NB_RETURN_IF_ERROR(check_positive(src, "intermediate_size", c->intermediate_size));
  NB_RETURN_IF_ERROR(check_positive(src, "num_hidden_layers", c->num_hidden_layers));
  NB_RETURN_IF_ERROR(check_positive(src, "num_attention_heads", c->num_attention_heads));
  NB_RETURN_IF_ERROR(check_positive(src, "num_key_value_heads", c->num_key_value_heads));
  NB_RETURN_IF_ERROR(check_positive(src, "head_dim", c->head_dim));
  NB_RETURN_IF_ERROR(check_positive(src, "max_position_embeddings", c->max_position_embeddings));
  if (c->num_attention_heads % c->num_key_value_heads != 0)
    return field_error(src, "num_key_value_heads",
                       strformat("a divisor of num_attention_heads %lld", static_cast<long long>(c->num_attention_heads)),
                       num(c->num_key_value_heads));
  if (!(c->rms_norm_eps > 0)) return field_error(src, "rms_norm_eps", "a positive number", num(c->rms_norm_eps));
  if (!(c->rope_theta > 0)) return field_error(src, "rope_theta", "a positive number", num(c->rope_theta));
  if (!(c->partial_rotary_factor > 0 && c->partial_rotary_factor <= 1))
    return field_error(src, "partial_rotary_factor", "a number in (0, 1]", num(c->partial_rotary_factor));
  if (c->arch == Arch::kDeepseekV3) {
    c->rotary_dim = c->qk_rope_head_dim;
  } else {
    c->rotary_dim = static_cast<int64_t>(static_cast<double>(c->head_dim) * c->partial_rotary_factor);
  }
  if (c->rotary_dim <= 0 || c->rotary_dim % 2 != 0)
    return field_error(src, c->arch == Arch::kDeepseekV3 ? "qk_rope_head_dim" : "partial_rotary_factor",
                       "a positive even rotary dimension", strformat("rotary dim %lld", static_cast<long long>(c->rotary_dim)));
  if (c->bos_token_id < -1) return field_error(src, "bos_token_id", "a token id", num(c->bos_token_id));
  for (int64_t id : c->eos_token_ids)
    if (id < 0) return field_error(src, "eos_token_id", "token ids >= 0", num(id));
  return Status::ok();
}

Status validate_moe(const std::string& src, const ModelConfig& c) {
  // Mixtral and DeepSeek always route; a Qwen MoE config with num_experts 0 is all dense (§7.3).
  const bool must_route = c.arch == Arch::kMixtral || c.arch == Arch::kDeepseekV3;
  if (!c.is_moe() && !must_route) return Status::ok();
  const char* experts = c.arch == Arch::kDeepseekV3 ? "n_routed_experts"
                        : c.arch == Arch::kMixtral  ? "num_local_experts"
                                                    : "num_experts";
  NB_RETURN_IF_ERROR(check_positive(src, experts, c.num_experts));
  if (c.num_experts_per_tok < 1 || c.num_experts_per_tok > c.num_experts)
    return field_error(src, "num_experts_per_tok", strformat("1..%lld (the expert count)", static_cast<long long>(c.num_experts)),
                       num(c.num_experts_per_tok));
  NB_RETURN_IF_ERROR(check_positive(src, "moe_intermediate_size", c.moe_intermediate_size));
  if (c.shared_expert_intermediate_size < 0)
    return field_error(src, "shared_expert_intermediate_size", "a non-negative integer", num(c.shared_expert_intermediate_size));
  NB_RETURN_IF_ERROR(check_positive(src, "decoder_sparse_step", c.decoder_sparse_step));
  for (int64_t l : c.mlp_only_layers)
    if (l < 0 || l >= c.num_hidden_layers)
      return field_error(src, "mlp_only_layers",
                         strformat("layer indices in [0, %lld)", static_cast<long long>(c.num_hidden_layers)), num(l));
  return Status::ok();
}

Status validate_deepseek(const std::string& src, const ModelConfig& c) {
  if (c.arch != Arch::kDeepseekV3) return Status::ok();
  NB_RETURN_IF_ERROR(check_positive(src, "kv_lora_rank", c.kv_lora_rank));
  NB_RETURN_IF_ERROR(check_positive(src, "qk_nope_head_dim", c.qk_nope_head_dim));
  NB_RETURN_IF_ERROR(check_positive(src, "v_head_dim", c.v_head_dim));
  NB_RETURN_IF_ERROR(check_positive(src, "n_group", c.n_group));
  NB_RETURN_IF_ERROR(check_positive(src, "moe_layer_freq", c.moe_layer_freq));
  if (c.q_lora_rank < 0) return field_error(src, "q_lora_rank", "a positive integer or null", num(c.q_lora_rank));
  if (c.n_shared_experts < 0) return field_error(src, "n_shared_experts", "a non-negative integer", num(c.n_shared_experts));
  if (c.num_experts % c.n_group != 0)
    return field_error(src, "n_group", strformat("a divisor of n_routed_experts %lld", static_cast<long long>(c.num_experts)),
                       num(c.n_group));
  if (c.topk_group < 1 || c.topk_group > c.n_group)
    return field_error(src, "topk_group", strformat("1..n_group (%lld)", static_cast<long long>(c.n_group)), num(c.topk_group));
  if (c.first_k_dense_replace < 0)
    return field_error(src, "first_k_dense_replace", "a non-negative integer", num(c.first_k_dense_replace));
  if (!(c.routed_scaling_factor > 0))
    return field_error(src, "routed_scaling_factor", "a positive number", num(c.routed_scaling_factor));
  return Status::ok();
}

}  // namespace

// ---- public -------------------------------------------------------------------------------------

const char* arch_name(Arch arch) { return family(arch).name; }

Result<Arch> parse_arch(std::string_view name) {
  for (const Family& f : kFamilies)
    if (name == f.name) return f.arch;
  return unsupported(strformat("architecture '%.*s' is not supported (supported: %s)", static_cast<int>(name.size()),
                               name.data(), supported_arch_list().c_str()));
}

Result<ModelConfig> parse_model_config(const std::string& json_text, const std::string& source_name) {
  NB_ASSIGN_OR_RETURN(Json json, parse_json(json_text, source_name));
  NB_ASSIGN_OR_RETURN(JsonObject root, JsonObject::make(json, source_name));
  ModelConfig c;
  NB_ASSIGN_OR_RETURN(c.arch, resolve_arch(root, &c));
  const Family& fam = family(c.arch);
  NB_RETURN_IF_ERROR(read_sizes(root, fam, &c));
  if (c.arch == Arch::kDeepseekV3) {
    NB_RETURN_IF_ERROR(read_deepseek(root, &c));
  } else {
    NB_RETURN_IF_ERROR(read_head_dim(root, &c));
  }
  NB_RETURN_IF_ERROR(read_rope(root, fam, &c));
  NB_RETURN_IF_ERROR(read_attention(root, &c));
  if (c.arch == Arch::kMixtral) NB_RETURN_IF_ERROR(read_mixtral(root, &c));
  if (c.arch == Arch::kQwen2Moe || c.arch == Arch::kQwen3Moe) NB_RETURN_IF_ERROR(read_qwen_moe(root, &c));
  NB_RETURN_IF_ERROR(read_tokens_and_dtype(root, &c));
  NB_RETURN_IF_ERROR(validate_common(source_name, &c));
  NB_RETURN_IF_ERROR(validate_moe(source_name, c));
  NB_RETURN_IF_ERROR(validate_deepseek(source_name, c));
  if (const Json* q = root.get("quantization_config")) {
    if (!q->is_object()) return root.type_error("quantization_config", "an object", *q);
    c.quantization_config = q->dump();
  }
  return c;
}

Result<ModelConfig> load_model_config(const std::string& model_dir) {
  const std::string path = path_join(model_dir, "config.json");
  NB_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  return parse_model_config(text, path);
}

bool ModelConfig::is_moe_layer(int layer) const {
  if (num_experts <= 0 || layer < 0 || layer >= num_hidden_layers) return false;
  switch (arch) {
    case Arch::kMixtral:
      return true;
    case Arch::kQwen2Moe:
    case Arch::kQwen3Moe:
      return std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) == mlp_only_layers.end() &&
             (layer + 1) % decoder_sparse_step == 0;
    case Arch::kDeepseekV3:
      return layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
    default:
      return false;
  }
}

int64_t ModelConfig::mlp_size(int layer) const { return is_moe_layer(layer) ? moe_intermediate_size : intermediate_size; }

}  // namespace nb
