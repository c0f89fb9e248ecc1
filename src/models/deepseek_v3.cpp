// DeepseekV3ForCausalLM (DeepSeek-V3, Kimi-K2; DeepSeek-V2-Lite with q_lora_rank null): multi-head
// latent attention with decoupled rope dims (interleaved pairs when rope_interleave) and yarn's
// mscale folded into the softmax scale; layers < first_k_dense_replace are dense, the rest MoE with
// sigmoid scores, e_score_correction_bias for selection only, grouped top-k (n_group, topk_group),
// norm_topk_prob, routed_scaling_factor and n_shared_experts always-on shared experts
// (formats.md §7.3).
#include <cmath>

#include "models/architectures.h"

namespace nb::models {

namespace {

// transformers' yarn_apply_mscale: any non-default rope with mscale_all_dim multiplies the softmax
// scale by mscale(factor, mscale_all_dim)^2, mscale(f, m) = 0.1 m ln f + 1 (1 when f <= 1).
float mla_softmax_scale(const ModelConfig& c) {
  double scale = 1.0 / std::sqrt(static_cast<double>(c.qk_nope_head_dim + c.qk_rope_head_dim));
  const RopeScaling& r = c.rope_scaling;
  if (r.type != "default" && r.mscale_all_dim != 0.0) {
    const double m = r.factor <= 1.0 ? 1.0 : 0.1 * r.mscale_all_dim * std::log(r.factor) + 1.0;
    scale *= m * m;
  }
  return static_cast<float>(scale);
}

}  // namespace

Result<DecoderSpec> deepseek_v3_spec(const ModelConfig& config) {
  NB_ASSIGN_OR_RETURN(DecoderSpec spec, dense_spec_from_config(config));
  spec.mla = true;
  nn::MlaSpec& m = spec.mla_spec;
  m.hidden = config.hidden_size;
  m.num_heads = static_cast<int>(config.num_attention_heads);
  m.q_lora_rank = config.q_lora_rank;
  m.kv_lora_rank = config.kv_lora_rank;
  m.qk_nope_head_dim = config.qk_nope_head_dim;
  m.qk_rope_head_dim = config.qk_rope_head_dim;
  m.v_head_dim = config.v_head_dim;
  m.attention_bias = config.attention_bias;
  m.rms_eps = static_cast<float>(config.rms_norm_eps);
  m.softmax_scale = mla_softmax_scale(config);
  spec.moe_block = [config](int layer) -> std::optional<nn::MoeSpec> {
    if (!config.is_moe_layer(layer)) return std::nullopt;
    nn::MoeSpec s = moe_spec_from_config(config);
    const std::string p = strformat("model.layers.%d.mlp", layer);
    s.router = p + ".gate";
    s.expert_prefix = p + ".experts.";
    s.fused_module = p + ".experts";
    s.route.scoring = ops::MoeScoring::kSigmoid;
    s.correction_bias = true;
    s.route.num_groups = static_cast<int>(config.n_group);
    s.route.topk_groups = static_cast<int>(config.topk_group);
    s.route.renorm_eps = 1e-20f;
    s.route.scaling = static_cast<float>(config.routed_scaling_factor);
    if (s.shared_intermediate > 0) s.shared_prefix = p + ".shared_experts";
    return s;
  };
  return spec;
}

}  // namespace nb::models
