// LlamaForCausalLM: q/k/v/o bias = attention_bias, MLP bias = mlp_bias, NeoX rope.
#include "models/architectures.h"

namespace nb::models {

Result<DecoderSpec> llama_spec(const ModelConfig& config) {
  NB_ASSIGN_OR_RETURN(DecoderSpec spec, dense_spec_from_config(config));
  spec.attention.qkv_bias = config.attention_bias;
  spec.attention.o_bias = config.attention_bias;
  spec.mlp_bias = config.mlp_bias;
  return spec;
}

}  // namespace nb::models
