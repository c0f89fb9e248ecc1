// Qwen2MoeForCausalLM and Qwen3MoeForCausalLM: Qwen2 / Qwen3 attention; layer l is an MoE block
// when l is not in mlp_only_layers and (l + 1) % decoder_sparse_step == 0, else a dense MLP of
// intermediate_size. Softmax top-k, renormalised when norm_topk_prob. Qwen2-MoE adds a shared expert
// (shared_expert_intermediate_size) scaled by sigmoid(shared_expert_gate(x)) (formats.md §7.3).
#include "models/architectures.h"

namespace nb::models {

namespace {

std::function<std::optional<nn::MoeSpec>(int)> qwen_moe_blocks(const ModelConfig& config) {
  return [config](int layer) -> std::optional<nn::MoeSpec> {
    if (!config.is_moe_layer(layer)) return std::nullopt;
    nn::MoeSpec m = moe_spec_from_config(config);
    const std::string p = strformat("model.layers.%d.mlp", layer);
    m.router = p + ".gate";
    m.expert_prefix = p + ".experts.";
    m.fused_module = p + ".experts";
    if (m.shared_intermediate > 0) {
      m.shared_prefix = p + ".shared_expert";
      m.shared_gate = true;
      m.shared_gate_module = p + ".shared_expert_gate";
    }
    return m;
  };
}

}  // namespace

Result<DecoderSpec> qwen2_moe_spec(const ModelConfig& config) {
  NB_ASSIGN_OR_RETURN(DecoderSpec spec, qwen2_spec(config));
  spec.attention.qkv_bias = config.qkv_bias;
  spec.moe_block = qwen_moe_blocks(config);
  return spec;
}

Result<DecoderSpec> qwen3_moe_spec(const ModelConfig& config) {
  NB_ASSIGN_OR_RETURN(DecoderSpec spec, qwen3_spec(config));
  spec.moe_block = qwen_moe_blocks(config);
  return spec;
}

}  // namespace nb::models
