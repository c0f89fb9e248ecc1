// Qwen2ForCausalLM: q/k/v always carry a bias, o_proj none.
#include "models/architectures.h"

namespace nb::models {

Result<DecoderSpec> qwen2_spec(const ModelConfig& config) {
  NB_ASSIGN_OR_RETURN(DecoderSpec spec, dense_spec_from_config(config));
  spec.attention.qkv_bias = true;
  if (config.use_sliding_window)
    return unsupported("Qwen2 with use_sliding_window=true (per-layer sliding windows) is not supported yet");
  return spec;
}

}  // namespace nb::models
