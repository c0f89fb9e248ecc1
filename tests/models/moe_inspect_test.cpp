// `nibble inspect` on MoE checkpoints: the layer summary comes from config.json (dense and MoE
// layers, experts, shared expert, routing), the KV bytes per token follow the attention kind (MLA:
// latent + rope key per layer; GQA: keys and values of every KV head), and the per-expert modules
// of one projection print as one line.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "quant/inspect.h"

namespace nb {
namespace {

const std::string kModels = std::string(NIBBLE_SOURCE_DIR) + "/tests/data/models";

TEST(MoeInspect, DeepseekLatentCacheAndLayers) {
  auto r = quant::inspect_model(kModels + "/deepseekv3-ct-w4g32-sym");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const quant::ArchSummary& a = r->summary;
  ASSERT_TRUE(a.known);
  EXPECT_EQ(a.dense_layers, 1);  // first_k_dense_replace 1
  EXPECT_EQ(a.moe_layers, 2);
  EXPECT_EQ(a.experts, 8);
  EXPECT_EQ(a.top_k, 3);
  EXPECT_EQ(a.shared_intermediate, 2 * 32);  // n_shared_experts x moe_intermediate_size
  EXPECT_EQ(a.kv_elements_per_token, 3 * (32 + 8));  // layers x (kv_lora_rank + qk_rope_head_dim)
  auto j = nlohmann::json::parse(quant::report_json(*r));
  EXPECT_EQ(j["layers"]["kv_bytes_per_token_bf16"].get<int64_t>(), 3 * 40 * 2);
  const std::string text = quant::report_text(*r);
  EXPECT_NE(text.find("KV cache per token: 240 bytes in bf16 (3 layers x (32 latent + 8 rope key))"), std::string::npos) << text;
  EXPECT_NE(text.find("model.layers.1.mlp.experts.{0..7}.gate_proj"), std::string::npos) << text;
  EXPECT_EQ(text.find("model.layers.1.mlp.experts.3.gate_proj"), std::string::npos) << "experts are folded";
  EXPECT_NE(text.find("MLA 4 heads"), std::string::npos) << text;
}

TEST(MoeInspect, QwenMoeWithSharedExpertAndDenseLayer) {
  auto r = quant::inspect_model(kModels + "/qwen2moe-gptq-descact");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  const quant::ArchSummary& a = r->summary;
  EXPECT_EQ(a.dense_layers, 1);  // mlp_only_layers [1]
  EXPECT_EQ(a.moe_layers, 2);
  EXPECT_EQ(a.shared_intermediate, 64);
  EXPECT_TRUE(a.shared_gate);
  EXPECT_EQ(a.kv_elements_per_token, 3 * 2 * 2 * 16);  // layers x kv heads x (k + v) x head_dim 64/4
  EXPECT_NE(quant::report_text(*r).find("shared expert 64 with a sigmoid gate"), std::string::npos);
}

}  // namespace
}  // namespace nb
