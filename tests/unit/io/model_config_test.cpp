// config.json → ModelConfig. Truth: the published config.json of each family (written inline,
// modelled on the checkpoints named in each test), the transformers config-class defaults, and the
// layer-selection rules of formats.md §7.3 enumerated by hand.
#include <gtest/gtest.h>
#include <unistd.h>

#include <initializer_list>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "core/mmap.h"
#include "io/model_config.h"

namespace nb {
namespace {

using nlohmann::json;

// meta-llama/Meta-Llama-3.1-8B
const char* kLlama31 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})";

// mistralai/Mistral-7B-v0.1
const char* kMistral = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000})";

// Qwen/Qwen2.5-7B
const char* kQwen25 = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
  "intermediate_size": 18944, "max_position_embeddings": 131072, "max_window_layers": 28,
  "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": true, "use_mrope": false,
  "use_sliding_window": false, "vocab_size": 152064})";

// Qwen/Qwen3-8B
const char* kQwen3 = R"({
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 12288,
  "max_position_embeddings": 40960, "max_window_layers": 36, "model_type": "qwen3",
  "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
  "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936})";

// mistralai/Mixtral-8x7B-v0.1
const char* kMixtral = R"({
  "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32,
  "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
  "output_router_logits": false, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.02, "sliding_window": null, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.36.0.dev0", "use_cache": true, "vocab_size": 32000})";

// Qwen/Qwen1.5-MoE-A2.7B
const char* kQwen2Moe = R"({
  "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 5632, "max_position_embeddings": 8192, "max_window_layers": 21,
  "model_type": "qwen2_moe", "num_attention_heads": 16, "num_hidden_layers": 24, "num_key_value_heads": 16,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.39.0.dev0", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936, "decoder_sparse_step": 1,
  "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts_per_tok": 4,
  "num_experts": 60, "norm_topk_prob": false, "output_router_logits": false,
  "router_aux_loss_coef": 0.001})";

// Qwen/Qwen3-30B-A3B
const char* kQwen3Moe = R"({
  "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
  "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
  "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [],
  "model_type": "qwen3_moe", "moe_intermediate_size": 768, "norm_topk_prob": true,
  "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
  "num_key_value_heads": 4, "output_router_logits": false, "rms_norm_eps": 1e-06, "rope_scaling": null,
  "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": null,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
  "use_cache": true, "use_sliding_window": false, "vocab_size": 151936})";

// deepseek-ai/DeepSeek-V3
const char* kDeepseekV3 = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"}, "aux_loss_alpha": 0.001,
  "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu",
  "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432, "kv_lora_rank": 512,
  "max_position_embeddings": 163840, "model_type": "deepseek_v3", "moe_intermediate_size": 2048,
  "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1,
  "norm_topk_prob": true, "num_attention_heads": 128, "num_experts_per_tok": 8, "num_hidden_layers": 61,
  "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "pretraining_tp": 1, "q_lora_rank": 1536,
  "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": true,
  "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
  "transformers_version": "4.33.1", "use_cache": true, "v_head_dim": 128, "vocab_size": 129280})";

ModelConfig parse_ok(const std::string& text) {
  Result<ModelConfig> c = parse_model_config(text, "test/config.json");
  EXPECT_TRUE(c.is_ok()) << c.status().to_string();
  return c.is_ok() ? *c : ModelConfig{};
}

// The base config with `patch` merged in (RFC 7386: a null value deletes the key).
std::string patched(const char* base, const json& patch) {
  json j = json::parse(base);
  j.merge_patch(patch);
  return j.dump();
}

void expect_error(const std::string& text, std::initializer_list<const char*> needles) {
  Result<ModelConfig> c = parse_model_config(text, "test/config.json");
  ASSERT_FALSE(c.is_ok()) << "expected an error containing '" << *needles.begin() << "'";
  for (const char* n : needles)
    EXPECT_NE(c.status().message().find(n), std::string::npos) << "message: " << c.status().message() << "\nmissing: " << n;
}

std::set<int> moe_layers(const ModelConfig& c) {
  std::set<int> s;
  for (int l = 0; l < c.num_hidden_layers; ++l)
    if (c.is_moe_layer(l)) s.insert(l);
  return s;
}

TEST(ModelConfig, Llama31) {
  ModelConfig c = parse_ok(kLlama31);
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_STREQ(arch_name(c.arch), "LlamaForCausalLM");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);  // 4096 / 32
  EXPECT_EQ(c.rotary_dim, 128);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias || c.mlp_bias || c.qkv_bias || c.o_bias || c.qk_norm);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_FALSE(c.is_moe());
  EXPECT_TRUE(moe_layers(c).empty());
  EXPECT_EQ(c.mlp_size(5), 14336);
  EXPECT_TRUE(c.quantization_config.empty());

  ModelConfig b = parse_ok(patched(kLlama31, {{"attention_bias", true}, {"mlp_bias", true}}));
  EXPECT_TRUE(b.qkv_bias && b.o_bias && b.mlp_bias);
}

TEST(ModelConfig, Mistral) {
  ModelConfig c = parse_ok(kMistral);
  EXPECT_EQ(c.arch, Arch::kMistral);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_TRUE(c.use_sliding_window);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_FALSE(c.qkv_bias);
  // Mistral-Nemo style: explicit head_dim not equal to hidden / heads, null sliding window.
  ModelConfig nemo = parse_ok(patched(kMistral, {{"hidden_size", 5120}, {"head_dim", 128}, {"sliding_window", nullptr}}));
  EXPECT_EQ(nemo.head_dim, 128);
  EXPECT_EQ(nemo.sliding_window, 0);
  EXPECT_FALSE(nemo.use_sliding_window);
}

TEST(ModelConfig, Qwen25) {
  ModelConfig c = parse_ok(kQwen25);
  EXPECT_EQ(c.arch, Arch::kQwen2);
  EXPECT_EQ(c.head_dim, 128);  // 3584 / 28
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_TRUE(c.qkv_bias);  // Qwen2: always
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_FALSE(c.use_sliding_window);
  EXPECT_EQ(c.sliding_window, 0);  // ignored unless use_sliding_window, like transformers
  EXPECT_EQ(c.max_window_layers, 28);
  ModelConfig sw = parse_ok(patched(kQwen25, {{"use_sliding_window", true}}));
  EXPECT_EQ(sw.sliding_window, 131072);
  EXPECT_TRUE(sw.use_sliding_window);
}

TEST(ModelConfig, Qwen3) {
  ModelConfig c = parse_ok(kQwen3);
  EXPECT_EQ(c.arch, Arch::kQwen3);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);  // integer in the file
  // Qwen3-0.6B style: head_dim 128 while hidden / heads = 64; tied embeddings.
  ModelConfig small = parse_ok(patched(kQwen3, {{"hidden_size", 1024}, {"num_attention_heads", 16},
                                                {"tie_word_embeddings", true}}));
  EXPECT_EQ(small.head_dim, 128);
  EXPECT_EQ(small.rotary_dim, 128);
  EXPECT_TRUE(small.tie_word_embeddings);
}

TEST(ModelConfig, Mixtral) {
  ModelConfig c = parse_ok(kMixtral);
  EXPECT_EQ(c.arch, Arch::kMixtral);
  EXPECT_EQ(c.moe_expert_count(), 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 14336);
  EXPECT_EQ(c.shared_expert_intermediate_size, 0);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(moe_layers(c).size(), 32u);  // every layer
  EXPECT_EQ(c.mlp_size(0), 14336);
  EXPECT_FALSE(c.is_moe_layer(32));
  EXPECT_FALSE(c.is_moe_layer(-1));
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
}

TEST(ModelConfig, Qwen15Moe) {
  ModelConfig c = parse_ok(kQwen2Moe);
  EXPECT_EQ(c.arch, Arch::kQwen2Moe);
  EXPECT_EQ(c.moe_expert_count(), 60);
  EXPECT_EQ(c.num_experts_per_tok, 4);
  EXPECT_EQ(c.moe_intermediate_size, 1408);
  EXPECT_EQ(c.shared_expert_intermediate_size, 5632);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_TRUE(c.qkv_bias);  // qkv_bias default true
  EXPECT_EQ(moe_layers(c).size(), 24u);
  EXPECT_EQ(c.mlp_size(3), 1408);
  // decoder_sparse_step 2 over 8 layers: (l+1) % 2 == 0 → 1, 3, 5, 7; mlp_only_layers removes 1.
  ModelConfig s = parse_ok(patched(kQwen2Moe, {{"num_hidden_layers", 8}, {"decoder_sparse_step", 2},
                                               {"mlp_only_layers", {1, 4}}, {"qkv_bias", false}}));
  EXPECT_EQ(moe_layers(s), (std::set<int>{3, 5, 7}));
  EXPECT_EQ(s.mlp_size(1), 5632);
  EXPECT_EQ(s.mlp_size(3), 1408);
  EXPECT_FALSE(s.qkv_bias);
  // Absent MoE fields take Qwen2MoeConfig's defaults.
  ModelConfig d = parse_ok(patched(kQwen2Moe, {{"num_experts", nullptr}, {"num_experts_per_tok", nullptr},
                                               {"moe_intermediate_size", nullptr},
                                               {"shared_expert_intermediate_size", nullptr}}));
  EXPECT_EQ(d.num_experts, 60);
  EXPECT_EQ(d.num_experts_per_tok, 4);
  EXPECT_EQ(d.moe_intermediate_size, 1408);
  EXPECT_EQ(d.shared_expert_intermediate_size, 5632);
}

TEST(ModelConfig, Qwen3Moe) {
  ModelConfig c = parse_ok(kQwen3Moe);
  EXPECT_EQ(c.arch, Arch::kQwen3Moe);
  EXPECT_EQ(c.moe_expert_count(), 128);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe_intermediate_size, 768);
  EXPECT_EQ(c.shared_expert_intermediate_size, 0);
  EXPECT_TRUE(c.norm_topk_prob);  // read from the file
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(moe_layers(c).size(), 48u);
  ModelConfig d = parse_ok(patched(kQwen3Moe, {{"norm_topk_prob", nullptr}}));
  EXPECT_FALSE(d.norm_topk_prob);  // Qwen3MoeConfig default
}

TEST(ModelConfig, DeepseekV3) {
  ModelConfig c = parse_ok(kDeepseekV3);
  EXPECT_EQ(c.arch, Arch::kDeepseekV3);
  EXPECT_EQ(c.moe_expert_count(), 256);
  EXPECT_EQ(c.n_routed_experts, 256);
  EXPECT_EQ(c.n_shared_experts, 1);
  EXPECT_EQ(c.shared_expert_intermediate_size, 2048);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_DOUBLE_EQ(c.routed_scaling_factor, 2.5);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.q_lora_rank, 1536);
  EXPECT_EQ(c.qk_rope_head_dim, 64);
  EXPECT_EQ(c.qk_nope_head_dim, 128);
  EXPECT_EQ(c.v_head_dim, 128);
  EXPECT_EQ(c.head_dim, 192);
  EXPECT_EQ(c.rotary_dim, 64);
  EXPECT_EQ(c.n_group, 8);
  EXPECT_EQ(c.topk_group, 4);
  EXPECT_EQ(c.first_k_dense_replace, 3);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_TRUE(c.rope_interleave);
  EXPECT_EQ(c.topk_method, "noaux_tc");
  EXPECT_EQ(c.scoring_func, "sigmoid");
  EXPECT_EQ(c.moe_layer_freq, 1);
  // yarn through the legacy `type` key.
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 40.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.mscale, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.mscale_all_dim, 1.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rope_scaling.attention_factor, 0.0);
  EXPECT_TRUE(c.rope_scaling.truncate);
  // Layers 0..2 dense, 3..60 MoE.
  std::set<int> expect;
  for (int l = 3; l < 61; ++l) expect.insert(l);
  EXPECT_EQ(moe_layers(c), expect);
  EXPECT_EQ(c.mlp_size(2), 18432);
  EXPECT_EQ(c.mlp_size(3), 2048);
  // The raw quantization_config survives for quant/.
  json q = json::parse(c.quantization_config);
  EXPECT_EQ(q["quant_method"], "fp8");
  EXPECT_EQ(q["weight_block_size"], json({128, 128}));
  // q_lora_rank null → plain q_proj; absent → class default 1536. moe_layer_freq 2: l >= 3 and even.
  json lite_json = json::parse(patched(kDeepseekV3, {{"moe_layer_freq", 2}, {"num_hidden_layers", 9}}));
  lite_json["q_lora_rank"] = nullptr;  // (merge_patch would delete it)
  ModelConfig lite = parse_ok(lite_json.dump());
  EXPECT_EQ(lite.q_lora_rank, 0);
  EXPECT_EQ(moe_layers(lite), (std::set<int>{4, 6, 8}));
  json no_q = json::parse(kDeepseekV3);
  no_q.erase("q_lora_rank");
  EXPECT_EQ(parse_ok(no_q.dump()).q_lora_rank, 1536);
  // Kimi-K2 declares model_type kimi_k2 with the DeepSeek-V3 architecture.
  EXPECT_EQ(parse_ok(patched(kDeepseekV3, {{"model_type", "kimi_k2"}, {"n_group", 1}, {"topk_group", 1}})).arch,
            Arch::kDeepseekV3);
}

TEST(ModelConfig, TransformersV5RopeParametersAndDtype) {
  json j = json::parse(kLlama31);
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j.erase("torch_dtype");
  j["dtype"] = "float16";
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 250000.0}, {"factor", 4.0},
                          {"original_max_position_embeddings", 32768}, {"attention_factor", 1.2},
                          {"beta_fast", 16}, {"truncate", false}, {"partial_rotary_factor", 0.5}};
  ModelConfig c = parse_ok(j.dump());
  EXPECT_DOUBLE_EQ(c.rope_theta, 250000.0);
  EXPECT_EQ(c.rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c.rope_scaling.attention_factor, 1.2);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_fast, 16.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_slow, 1.0);
  EXPECT_FALSE(c.rope_scaling.truncate);
  EXPECT_EQ(c.rotary_dim, 64);
  EXPECT_EQ(c.torch_dtype, "float16");
  // v5 default rope: only rope_theta inside.
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  ModelConfig d = parse_ok(j.dump());
  EXPECT_EQ(d.rope_scaling.type, "default");
  EXPECT_DOUBLE_EQ(d.rope_theta, 1e6);
  // Linear and dynamic with the legacy `type` key.
  ModelConfig lin = parse_ok(patched(kMistral, {{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}}));
  EXPECT_EQ(lin.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(lin.rope_scaling.factor, 2.0);
  ModelConfig dyn = parse_ok(patched(kMistral, {{"rope_scaling", {{"rope_type", "dynamic"}, {"factor", 3}}}}));
  EXPECT_EQ(dyn.rope_scaling.type, "dynamic");
  EXPECT_DOUBLE_EQ(dyn.rope_scaling.factor, 3.0);
}

TEST(ModelConfig, DefaultsAndArchitectureFromModelType) {
  json j = json::parse(kLlama31);
  for (const char* k : {"num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "rope_theta",
                        "tie_word_embeddings", "hidden_act", "rope_scaling", "architectures", "eos_token_id",
                        "bos_token_id", "torch_dtype"})
    j.erase(k);
  ModelConfig c = parse_ok(j.dump());
  EXPECT_EQ(c.arch, Arch::kLlama);  // from model_type
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);  // LlamaConfig defaults
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_TRUE(c.torch_dtype.empty());
}

TEST(ModelConfig, LoadFromDirectory) {
  std::string tmpl = ::testing::TempDir() + "nb_io_cfg_XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  ASSERT_NE(mkdtemp(buf.data()), nullptr);
  std::string dir = buf.data();
  ASSERT_TRUE(write_text_file(path_join(dir, "config.json"), kQwen3).is_ok());
  Result<ModelConfig> c = load_model_config(dir);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->arch, Arch::kQwen3);
  Result<ModelConfig> missing = load_model_config(dir + "/nope");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find("nope/config.json"), std::string::npos) << missing.status().message();
  ASSERT_TRUE(write_text_file(path_join(dir, "config.json"), R"({"architectures": ["Gemma2ForCausalLM"]})").is_ok());
  Result<ModelConfig> bad = load_model_config(dir);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find(path_join(dir, "config.json")), std::string::npos) << bad.status().message();
}

TEST(ModelConfigErrors, ArchitectureAndJson) {
  expect_error(patched(kLlama31, {{"architectures", {"GemmaForCausalLM"}}}),
               {"test/config.json", "GemmaForCausalLM", "not supported", "LlamaForCausalLM", "DeepseekV3ForCausalLM"});
  Result<ModelConfig> r = parse_model_config(patched(kLlama31, {{"architectures", {"PhiForCausalLM"}}}), "x");
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kUnsupported);
  expect_error(patched(kLlama31, {{"model_type", "mistral"}}), {"model_type", "\"llama\"", "\"mistral\""});
  expect_error(patched(kLlama31, {{"architectures", nullptr}, {"model_type", "gpt2"}}), {"gpt2", "not one of"});
  expect_error(patched(kLlama31, {{"architectures", "LlamaForCausalLM"}}), {"architectures", "list of strings"});
  expect_error("{\"architectures\": [", {"test/config.json", "invalid JSON"});
  expect_error("[1, 2]", {"test/config.json", "expected a JSON object"});
}

TEST(ModelConfigErrors, FieldsAndTypes) {
  expect_error(patched(kLlama31, {{"hidden_size", nullptr}}), {"test/config.json", "'hidden_size'", "missing"});
  expect_error(patched(kQwen3, {{"vocab_size", nullptr}}), {"'vocab_size'", "missing"});
  expect_error(patched(kLlama31, {{"hidden_size", "4096"}}), {"'hidden_size'", "expected an integer", "string \"4096\""});
  expect_error(patched(kLlama31, {{"num_hidden_layers", 32.5}}), {"'num_hidden_layers'", "expected an integer", "32.5"});
  expect_error(patched(kLlama31, {{"tie_word_embeddings", 1}}), {"'tie_word_embeddings'", "true or false"});
  expect_error(patched(kLlama31, {{"rms_norm_eps", "1e-5"}}), {"'rms_norm_eps'", "expected a number"});
  expect_error(patched(kLlama31, {{"eos_token_id", "</s>"}}), {"'eos_token_id'", "integer or a list"});
  expect_error(patched(kLlama31, {{"eos_token_id", {1, "x"}}}), {"'eos_token_id'[1]", "expected an integer"});
  expect_error(patched(kLlama31, {{"hidden_act", "gelu"}}), {"'hidden_act'", "\"silu\"", "\"gelu\""});
  expect_error(patched(kLlama31, {{"num_attention_heads", 30}}), {"'num_attention_heads'", "divisor of hidden_size 4096", "30"});
  expect_error(patched(kLlama31, {{"num_key_value_heads", 7}}), {"'num_key_value_heads'", "divisor of num_attention_heads 32", "7"});
  expect_error(patched(kLlama31, {{"vocab_size", 0}}), {"'vocab_size'", "positive", "got 0"});
  expect_error(patched(kLlama31, {{"rms_norm_eps", 0}}), {"'rms_norm_eps'", "positive"});
  expect_error(patched(kLlama31, {{"partial_rotary_factor", 1.5}}), {"'partial_rotary_factor'", "(0, 1]"});
  expect_error(patched(kMistral, {{"sliding_window", -1}}), {"'sliding_window'", "non-negative"});
  expect_error(patched(kLlama31, {{"quantization_config", "gptq"}}), {"'quantization_config'", "an object"});
}

TEST(ModelConfigErrors, Rope) {
  expect_error(patched(kLlama31, {{"rope_scaling", {{"rope_type", "longrope"}, {"short_factor", {1.0}}}}}),
               {"rope_scaling.rope_type", "longrope", "not supported"});
  expect_error(patched(kLlama31, {{"rope_scaling", {{"rope_type", "mrope"}}}}), {"rope_type", "\"mrope\"", "yarn"});
  expect_error(patched(kLlama31, {{"rope_scaling", {{"rope_type", "llama3"}, {"low_freq_factor", nullptr}}}}),
               {"'rope_scaling.low_freq_factor'", "missing"});
  expect_error(patched(kLlama31, {{"rope_scaling", {{"rope_type", "linear"}, {"factor", nullptr}, {"low_freq_factor", nullptr},
                                                    {"high_freq_factor", nullptr}, {"original_max_position_embeddings", nullptr}}}}),
               {"'rope_scaling.factor'", "missing"});
  expect_error(patched(kLlama31, {{"rope_scaling", {{"rope_type", nullptr}}}}), {"rope_type", "missing"});
  expect_error(patched(kLlama31, {{"rope_scaling", {{"factor", -2.0}}}}), {"'rope_scaling.factor'", "positive"});
  expect_error(patched(kLlama31, {{"rope_scaling", {{"high_freq_factor", 0.5}}}}), {"low_freq_factor < high_freq_factor"});
  expect_error(patched(kLlama31, {{"rope_scaling", "yarn"}}), {"'rope_scaling'", "expected a JSON object"});
}

TEST(ModelConfigErrors, Moe) {
  expect_error(patched(kMixtral, {{"num_experts_per_tok", 9}}), {"'num_experts_per_tok'", "1..8", "9"});
  expect_error(patched(kMixtral, {{"num_local_experts", 0}}), {"'num_local_experts'", "positive"});
  expect_error(patched(kQwen2Moe, {{"mlp_only_layers", {0, 24}}}), {"'mlp_only_layers'", "[0, 24)", "24"});
  expect_error(patched(kQwen2Moe, {{"decoder_sparse_step", 0}}), {"'decoder_sparse_step'", "positive"});
  expect_error(patched(kQwen3Moe, {{"num_experts_per_tok", 0}}), {"'num_experts_per_tok'", "1..128"});
  // A Qwen MoE config without experts is a dense model.
  ModelConfig dense = parse_ok(patched(kQwen2Moe, {{"num_experts", 0}}));
  EXPECT_TRUE(moe_layers(dense).empty());
  EXPECT_EQ(dense.mlp_size(0), 5632);
  expect_error(patched(kDeepseekV3, {{"topk_method", "greedy"}}), {"'topk_method'", "noaux_tc", "greedy"});
  expect_error(patched(kDeepseekV3, {{"scoring_func", "softmax"}}), {"'scoring_func'", "sigmoid", "softmax"});
  expect_error(patched(kDeepseekV3, {{"n_group", 7}}), {"'n_group'", "divisor of n_routed_experts 256"});
  expect_error(patched(kDeepseekV3, {{"topk_group", 9}}), {"'topk_group'", "1..n_group"});
  expect_error(patched(kDeepseekV3, {{"kv_lora_rank", 0}}), {"'kv_lora_rank'", "positive"});
}

}  // namespace
}  // namespace nb
