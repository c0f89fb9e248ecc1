// config.json → ModelConfig (formats.md §7): the hyper-parameters of every supported architecture,
// with transformers' defaults for absent fields, validated with expected-versus-actual messages.
//
// Sizes (MoE layer sizes, expert counts, shared-expert sizes) come from here, never from weights
// (design.md rule 4). Unknown keys are ignored; the raw `quantization_config` is kept for quant/.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace nb {

enum class Arch {
  kLlama,        // LlamaForCausalLM
  kMistral,      // MistralForCausalLM
  kQwen2,        // Qwen2ForCausalLM
  kQwen3,        // Qwen3ForCausalLM
  kMixtral,      // MixtralForCausalLM
  kQwen2Moe,     // Qwen2MoeForCausalLM
  kQwen3Moe,     // Qwen3MoeForCausalLM
  kDeepseekV3,   // DeepseekV3ForCausalLM (also Kimi-K2)
};

const char* arch_name(Arch arch);  // "LlamaForCausalLM"
// Unknown name → unsupported error naming it and listing the supported ones.
Result<Arch> parse_arch(std::string_view name);

// rope_scaling / rope_parameters (formats.md §7.4). Fields not used by `type` keep their defaults.
struct RopeScaling {
  std::string type = "default";  // default | linear | dynamic | llama3 | yarn
  double factor = 1.0;           // linear, dynamic, llama3, yarn
  double low_freq_factor = 1.0;  // llama3
  double high_freq_factor = 4.0; // llama3
  int64_t original_max_position_embeddings = 0;  // llama3 (required), yarn (0 = absent)
  double beta_fast = 32.0, beta_slow = 1.0;      // yarn
  double mscale = 0.0, mscale_all_dim = 0.0;     // yarn (0 = absent)
  double attention_factor = 0.0;                 // yarn (0 = absent: derive from factor / mscale)
  bool truncate = true;                          // yarn
};

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string architecture;  // architectures[0] as written
  std::string model_type;

  // Common (§7.1).
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // dense MLP width (dense layers of MoE models too)
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // default: num_attention_heads
  // Per-head q/k/v width. Default hidden / heads. DeepSeek-V3: qk_nope + qk_rope (the q/k width;
  // v uses v_head_dim).
  int64_t head_dim = 0;
  std::string hidden_act = "silu";  // only silu is supported
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;

  // RoPE.
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double partial_rotary_factor = 1.0;
  int64_t rotary_dim = 0;  // derived: head_dim * partial_rotary_factor; DeepSeek: qk_rope_head_dim
  bool rope_interleave = false;  // DeepSeek: rope dims stored as interleaved pairs (GPT-J style)

  // Attention details.
  bool attention_bias = false;  // Llama/Mistral/Qwen3/DeepSeek field
  bool mlp_bias = false;        // Llama field
  bool qkv_bias = false;        // derived: q/k/v carry a bias (Qwen2 always; Qwen2-MoE `qkv_bias`, default true)
  bool o_bias = false;          // derived: o_proj carries a bias (attention_bias of Llama/Qwen3)
  bool qk_norm = false;         // derived: per-head RMSNorm on q and k (Qwen3, Qwen3-MoE)
  bool use_sliding_window = false;
  // 0 = none. Qwen families: 0 unless use_sliding_window (as transformers does).
  int64_t sliding_window = 0;
  int64_t max_window_layers = 0;
  std::vector<std::string> layer_types;  // as given ("full_attention" / "sliding_attention"), may be empty

  // Tokens and dtype.
  int64_t bos_token_id = -1;             // -1 = absent
  std::vector<int64_t> eos_token_ids;    // int or list in the file
  std::string torch_dtype;               // `dtype` (transformers v5) or `torch_dtype`; may be empty

  // MoE (§7.3). Zero for dense models.
  int64_t num_experts = 0;             // routed experts: num_local_experts / num_experts / n_routed_experts
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;   // per-expert width (Mixtral: intermediate_size)
  // Shared-expert MLP width (Qwen2-MoE: shared_expert_intermediate_size; DeepSeek:
  // moe_intermediate_size * n_shared_experts); 0 = no shared expert.
  int64_t shared_expert_intermediate_size = 0;
  bool norm_topk_prob = false;         // renormalise the top-k weights (Mixtral: always)
  int64_t decoder_sparse_step = 1;     // Qwen MoE layer selection
  std::vector<int64_t> mlp_only_layers;

  // DeepSeek-V3 (MLA attention, grouped sigmoid routing). Defaults of DeepseekV3Config.
  int64_t n_shared_experts = 0;
  int64_t n_routed_experts = 0;
  double routed_scaling_factor = 1.0;
  int64_t kv_lora_rank = 0;
  int64_t q_lora_rank = 0;  // 0 = null: plain q_proj
  int64_t qk_rope_head_dim = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t n_group = 0;
  int64_t topk_group = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  std::string topk_method;   // "noaux_tc" (empty when absent)
  std::string scoring_func;  // "sigmoid" (empty when absent)

  // The `quantization_config` object as JSON text; empty when absent. Parsed by quant/.
  std::string quantization_config;

  bool is_moe() const { return num_experts > 0; }
  // Whether decoder layer `layer` has a routed-expert block (per-family rule of §7.3).
  bool is_moe_layer(int layer) const;
  int64_t moe_expert_count() const { return num_experts; }
  // Width of layer `layer`'s MLP: the per-expert width for MoE layers, intermediate_size otherwise.
  int64_t mlp_size(int layer) const;
};

// Parses config.json text. `source_name` names it in errors ("Qwen3-8B/config.json").
Result<ModelConfig> parse_model_config(const std::string& json_text, const std::string& source_name);
// Reads <model_dir>/config.json.
Result<ModelConfig> load_model_config(const std::string& model_dir);

}  // namespace nb
