// MistralForCausalLM: Llama without biases, with an optional sliding window.
#include "models/architectures.h"

namespace nb::models {

Result<DecoderSpec> mistral_spec(const ModelConfig& config) {
  NB_ASSIGN_OR_RETURN(DecoderSpec spec, dense_spec_from_config(config));
  spec.attention.sliding_window = config.sliding_window > 0 ? static_cast<int>(config.sliding_window) : 0;
  return spec;
}

}  // namespace nb::models
