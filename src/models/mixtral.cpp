// MixtralForCausalLM: Mistral attention; every layer a sparse MoE block `block_sparse_moe` of
// num_local_experts experts w1 (gate), w3 (up), w2 (down), softmax top-k always renormalised, no
// shared expert (formats.md §7.3).
#include "models/architectures.h"

namespace nb::models {

Result<DecoderSpec> mixtral_spec(const ModelConfig& config) {
  NB_ASSIGN_OR_RETURN(DecoderSpec spec, mistral_spec(config));
  spec.moe_block = [config](int layer) -> std::optional<nn::MoeSpec> {
    if (!config.is_moe_layer(layer)) return std::nullopt;
    nn::MoeSpec m = moe_spec_from_config(config);
    const std::string p = strformat("model.layers.%d.block_sparse_moe", layer);
    m.router = p + ".gate";
    m.router_alias = strformat("model.layers.%d.mlp.gate", layer);
    m.expert_prefix = p + ".experts.";
    m.gate_name = "w1";
    m.up_name = "w3";
    m.down_name = "w2";
    // transformers 5 renames block_sparse_moe to mlp: fused tensors and PEFT's fused adapters use it.
    m.fused_module = strformat("model.layers.%d.mlp.experts", layer);
    return m;
  };
  return spec;
}

}  // namespace nb::models
