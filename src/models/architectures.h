// One entry per supported architecture: how its config maps onto shared blocks (models/<arch>.cpp).
#pragma once

#include "models/decoder.h"

namespace nb::models {

// Fields every dense family shares (sizes, norms, rope) — each architecture file adds its own.
Result<DecoderSpec> dense_spec_from_config(const ModelConfig& config);

Result<DecoderSpec> llama_spec(const ModelConfig& config);
Result<DecoderSpec> mistral_spec(const ModelConfig& config);
Result<DecoderSpec> qwen2_spec(const ModelConfig& config);
Result<DecoderSpec> qwen3_spec(const ModelConfig& config);
Result<DecoderSpec> mixtral_spec(const ModelConfig& config);
Result<DecoderSpec> qwen2_moe_spec(const ModelConfig& config);
Result<DecoderSpec> qwen3_moe_spec(const ModelConfig& config);
Result<DecoderSpec> deepseek_v3_spec(const ModelConfig& config);

// The sizes and routing every MoE family shares (softmax top-k; norm_topk_prob; the shared expert
// width); each architecture adds its names and routing variant.
nn::MoeSpec moe_spec_from_config(const ModelConfig& config);

}  // namespace nb::models
