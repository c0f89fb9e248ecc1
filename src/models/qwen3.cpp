// Qwen3ForCausalLM: per-head RMSNorm on q and k (q_norm, k_norm) before RoPE; bias = attention_bias.
#include "models/architectures.h"

namespace nb::models {

Result<DecoderSpec> qwen3_spec(const ModelConfig& config) {
  NB_ASSIGN_OR_RETURN(DecoderSpec spec, dense_spec_from_config(config));
  spec.attention.qk_norm = true;
  spec.attention.qkv_bias = config.attention_bias;
  spec.attention.o_bias = config.attention_bias;
  if (config.use_sliding_window)
    return unsupported("Qwen3 with use_sliding_window=true (per-layer sliding windows) is not supported yet");
  return spec;
}

}  // namespace nb::models
