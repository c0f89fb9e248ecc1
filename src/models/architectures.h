// One entry per supported architecture: how its config maps onto shared blocks.
#pragma once

#include "models/decoder.h"

namespace nb::models {

// Fields every dense family shares (sizes, norms, rope) — each architecture file adds its own.
Result<DecoderSpec> dense_spec_from_config(const ModelConfig& config);

Result<DecoderSpec> llama_spec(const ModelConfig& config);
Result<DecoderSpec> mistral_spec(const ModelConfig& config);
Result<DecoderSpec> qwen2_spec(const ModelConfig& config);
Result<DecoderSpec> qwen3_spec(const ModelConfig& config);

}  // namespace nb::models
