// Quantization configs: compressed-tensors (presets, mixed precision, strategy inference, actorder
// aliases, refusals), target/ignore matching (formats.md §2.2), GPTQ (config.json or
// quantize_config.json), AWQ.
#include <gtest/gtest.h>

#include "quant/quant_config.h"
#include "quant_test_util.h"

namespace nb::quant {
namespace {

std::string ct_config(const std::string& weights, const std::string& extra = "",
                      const std::string& targets = R"(["Linear"])") {
  return R"({"quant_method": "compressed-tensors", "format": "pack-quantized", "version": "0.12.2",
             "quantization_status": "compressed", "config_groups": {"group_0": {"targets": )" +
         targets + R"(, "weights": )" + weights +
         R"(, "input_activations": null, "output_activations": null, "format": "pack-quantized"}})" + extra + "}";
}

QuantConfig parse_ok(const std::string& json) {
  Result<QuantConfig> c = parse_quant_config(json, "");
  EXPECT_TRUE(c.is_ok()) << c.status().to_string();
  return c.is_ok() ? std::move(c).value() : QuantConfig{};
}

void expect_error(const std::string& json, const std::string& needle, const std::string& dir = "") {
  Result<QuantConfig> c = parse_quant_config(json, dir);
  ASSERT_FALSE(c.is_ok()) << "accepted: " << json;
  EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().to_string();
}

TEST(CtConfig, GroupSchemeAndIgnore) {
  QuantConfig c = parse_ok(ct_config(
      R"({"num_bits": 4, "type": "int", "symmetric": false, "strategy": "group", "group_size": 64,
          "actorder": null, "dynamic": false, "block_structure": null, "observer": "minmax", "observer_kwargs": {}})",
      R"(, "ignore": ["lm_head", "re:.*mlp.gate$"], "kv_cache_scheme": null, "sparsity_config": {},
         "transform_config": {}, "global_compression_ratio": null)"));
  EXPECT_EQ(c.method, QuantMethod::kCompressedTensors);
  EXPECT_EQ(c.version, "0.12.2");
  auto s = c.scheme_for("model.layers.0.mlp.down_proj");
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->bits, 4);
  EXPECT_EQ(s->strategy, QuantStrategy::kGroup);
  EXPECT_EQ(s->group_size, 64);
  EXPECT_FALSE(s->symmetric);
  EXPECT_FALSE(s->act_order);
  EXPECT_FALSE(c.scheme_for("lm_head").has_value());
  EXPECT_FALSE(c.scheme_for("model.layers.3.mlp.gate").has_value());
  // `$` anchors the end: the experts' gate_proj is still quantized.
  EXPECT_TRUE(c.scheme_for("model.layers.3.mlp.gate_proj").has_value());
  EXPECT_TRUE(c.scheme_for("model.layers.3.mlp.experts.3.gate_proj").has_value());
  // Not a Linear: no class match.
  EXPECT_FALSE(c.scheme_for("model.embed_tokens", "Embedding").has_value());
}

TEST(CtConfig, RegexIsAnchoredAtTheStartOnly) {
  QuantConfig c = parse_ok(ct_config(R"({"num_bits": 4, "group_size": 128})", R"(, "ignore": ["re:.*q_proj"])",
                                     R"(["re:model\\.layers\\.[01]\\."])"));
  EXPECT_TRUE(c.scheme_for("model.layers.0.mlp.up_proj", "Anything").has_value());  // prefix match suffices
  EXPECT_TRUE(c.scheme_for("model.layers.1.self_attn.k_proj").has_value());
  EXPECT_FALSE(c.scheme_for("model.layers.2.self_attn.k_proj").has_value());
  EXPECT_FALSE(c.scheme_for("xmodel.layers.0.self_attn.k_proj").has_value());      // anchored at the start
  EXPECT_FALSE(c.scheme_for("model.layers.0.self_attn.q_proj").has_value());       // ignored (no $ needed)
  EXPECT_FALSE(c.scheme_for("model.layers.0.self_attn.q_proj_extra").has_value()); // not anchored at the end
}

TEST(CtConfig, ExactNameBeatsRegexBeatsClass) {
  const std::string json = R"({"quant_method": "compressed-tensors", "format": "mixed-precision",
    "config_groups": {
      "g_class": {"targets": ["Linear"], "weights": {"num_bits": 4, "group_size": 128}, "format": "pack-quantized"},
      "g_regex": {"targets": ["re:.*down_proj$"], "weights": {"num_bits": 8, "strategy": "channel"},
                  "format": "pack-quantized"},
      "g_name": {"targets": ["model.layers.0.mlp.down_proj"], "weights": {"num_bits": 4, "group_size": 32},
                 "format": "pack-quantized"}},
    "ignore": []})";
  QuantConfig c = parse_ok(json);
  EXPECT_EQ(c.scheme_for("model.layers.0.mlp.down_proj")->group_size, 32);
  EXPECT_EQ(c.scheme_for("model.layers.1.mlp.down_proj")->bits, 8);
  EXPECT_EQ(c.scheme_for("model.layers.1.mlp.down_proj")->strategy, QuantStrategy::kChannel);
  EXPECT_EQ(c.scheme_for("model.layers.1.mlp.up_proj")->group_size, 128);
  // Fused shards must agree.
  auto fused = c.scheme_for_fused({"model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"});
  ASSERT_TRUE(fused.is_ok());
  EXPECT_TRUE(fused->has_value());
  auto bad = c.scheme_for_fused({"model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("different quantization schemes"), std::string::npos);
}

TEST(CtConfig, MixedPrecisionNeedsGroupFormats) {
  expect_error(R"({"quant_method": "compressed-tensors", "format": "mixed-precision",
    "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "group_size": 128}}}})",
               "mixed-precision");
  expect_error(R"({"quant_method": "compressed-tensors", "format": "mixed-precision",
    "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int"},
                            "format": "naive-quantized"}}})",
               "naive-quantized");
}

TEST(CtConfig, Presets) {
  for (auto [name, bits, sym] : {std::tuple{"W4A16", 4, true}, {"W4A16_ASYM", 4, false}, {"W8A16", 8, true}}) {
    QuantConfig c = parse_ok(std::string(R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {")") + name + R"(": ["Linear"]}, "ignore": ["lm_head"]})");
    auto s = c.scheme_for("model.layers.0.self_attn.o_proj");
    ASSERT_TRUE(s.has_value()) << name;
    EXPECT_EQ(s->bits, bits) << name;
    EXPECT_EQ(s->symmetric, sym) << name;
    EXPECT_EQ(s->strategy, QuantStrategy::kGroup);
    EXPECT_EQ(s->group_size, 128);
  }
  expect_error(R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
                   "config_groups": {"W8A8": ["Linear"]}})", "preset 'W8A8'");
}

TEST(CtConfig, StrategyInference) {
  auto scheme = [](const std::string& w) { return *parse_ok(ct_config(w)).scheme_for("x.q_proj"); };
  EXPECT_EQ(scheme(R"({"num_bits": 4, "group_size": 32})").strategy, QuantStrategy::kGroup);
  EXPECT_EQ(scheme(R"({"num_bits": 4, "group_size": -1})").strategy, QuantStrategy::kChannel);
  EXPECT_EQ(scheme(R"({"num_bits": 4, "group_size": null})").strategy, QuantStrategy::kTensor);
  EXPECT_EQ(scheme(R"({"num_bits": 4})").strategy, QuantStrategy::kTensor);
  EXPECT_EQ(scheme(R"({"num_bits": 8, "strategy": "channel", "group_size": null})").strategy, QuantStrategy::kChannel);
  EXPECT_EQ(scheme(R"({"num_bits": 4, "strategy": "GROUP", "group_size": 16})").group_size, 16);
  expect_error(ct_config(R"({"num_bits": 4, "strategy": "group"})"), "group_size");
  expect_error(ct_config(R"({"num_bits": 4, "strategy": "channel", "group_size": 128})"), "requires strategy 'group'");
  expect_error(ct_config(R"({"num_bits": 4, "group_size": -2})"), "invalid group_size");
  expect_error(ct_config(R"({"num_bits": 4, "strategy": "block", "block_structure": [128, 128]})"), "block");
  expect_error(ct_config(R"({"num_bits": 8, "strategy": "token"})"), "strategy 'token'");
}

TEST(CtConfig, ActorderAliases) {
  auto act = [](const std::string& a) {
    return parse_ok(ct_config(R"({"num_bits": 4, "group_size": 128, "actorder": )" + a + "}"))
        .scheme_for("x.q_proj")
        ->act_order;
  };
  EXPECT_TRUE(act(R"("group")"));
  EXPECT_TRUE(act(R"("dynamic")"));
  EXPECT_TRUE(act("true"));
  EXPECT_FALSE(act(R"("weight")"));
  EXPECT_FALSE(act(R"("static")"));
  EXPECT_FALSE(act("false"));
  EXPECT_FALSE(act("null"));
  expect_error(ct_config(R"({"num_bits": 4, "strategy": "channel", "actorder": "group"})"), "requires strategy group");
  expect_error(ct_config(R"({"num_bits": 4, "group_size": 128, "actorder": "sideways"})"), "sideways");
}

TEST(CtConfig, Refusals) {
  expect_error(ct_config(R"({"num_bits": 4, "group_size": 128, "dynamic": true})"), "dynamic");
  expect_error(ct_config(R"({"num_bits": 8, "type": "float", "strategy": "channel"})"), "type 'float'");
  expect_error(ct_config(R"({"num_bits": 3, "group_size": 128})"), "3-bit");
  expect_error(ct_config(R"({"num_bits": 2, "group_size": 128})"), "2-bit");
  expect_error(R"({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"g":
    {"targets": ["Linear"], "weights": {"num_bits": 8, "strategy": "channel"},
     "input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": true}}}})",
               "activation quantization");
  for (const char* f : {"float-quantized", "int-quantized", "naive-quantized", "nvfp4-pack-quantized", "marlin-24",
                        "sparse-24-bitmask", "dense"})
    expect_error(std::string(R"({"quant_method": "compressed-tensors", "format": ")") + f +
                     R"(", "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4}}}})",
                 std::string("format '") + f + "'");
  expect_error(ct_config(R"({"num_bits": 4, "group_size": 128})", R"(, "quantization_status": "frozen")"), "frozen");
  expect_error(ct_config(R"({"num_bits": 4, "group_size": 128})", R"(, "sparsity_config": {"format": "sparse-24-bitmask"})"),
               "sparse");
  expect_error(ct_config(R"({"num_bits": 4, "group_size": 128})", R"(, "ignore": ["re:(unclosed"])"),
               "invalid regular expression");
  expect_error(R"({"quant_method": "fp8", "activation_scheme": "dynamic"})", "'fp8'");
  expect_error(R"({"quant_method": "bitsandbytes"})", "'bitsandbytes'");
  expect_error(R"({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {}})",
               "no config groups");
  expect_error("{not json", "invalid JSON");
}

TEST(CtConfig, NoQuantizationConfigMeansPlain) {
  QuantConfig c = parse_ok("");
  EXPECT_EQ(c.method, QuantMethod::kNone);
  EXPECT_FALSE(c.scheme_for("model.layers.0.mlp.down_proj").has_value());
  EXPECT_EQ(parse_ok("null").method, QuantMethod::kNone);
}

TEST(GptqConfig, Fields) {
  QuantConfig c = parse_ok(R"({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": true, "sym": false,
                               "checkpoint_format": "gptq_v2", "damp_percent": 0.01, "true_sequential": true})");
  EXPECT_EQ(c.method, QuantMethod::kGptq);
  EXPECT_TRUE(c.gptq_v2);
  auto s = c.scheme_for("model.layers.0.self_attn.q_proj");
  ASSERT_TRUE(s.has_value());
  EXPECT_TRUE(s->act_order);
  EXPECT_FALSE(s->symmetric);
  EXPECT_EQ(s->group_size, 128);
  EXPECT_FALSE(c.scheme_for("lm_head").has_value());
  // Defaults: v1, symmetric; group_size -1 is per channel and makes desc_act moot.
  QuantConfig d = parse_ok(R"({"quant_method": "gptq", "bits": 8, "group_size": -1, "desc_act": true})");
  EXPECT_FALSE(d.gptq_v2);
  EXPECT_EQ(d.scheme.strategy, QuantStrategy::kChannel);
  EXPECT_FALSE(d.scheme.act_order);
  EXPECT_TRUE(d.scheme.symmetric);
  // GPTQModel: `format` alongside, lm_head quantized.
  QuantConfig m = parse_ok(R"({"quant_method": "gptq", "bits": 4, "group_size": 32, "format": "gptq_v2",
                               "lm_head": true, "pack_dtype": "int32", "dynamic": null})");
  EXPECT_TRUE(m.gptq_v2);
  EXPECT_TRUE(m.scheme_for("lm_head").has_value());
  QuantConfig blk = parse_ok(R"({"quant_method": "gptq", "bits": 4, "group_size": 128,
                                 "modules_in_block_to_quantize": [["self_attn.q_proj"], ["mlp.down_proj"]]})");
  EXPECT_TRUE(blk.scheme_for("model.layers.2.self_attn.q_proj").has_value());
  EXPECT_FALSE(blk.scheme_for("model.layers.2.mlp.up_proj").has_value());
}

TEST(GptqConfig, Refusals) {
  expect_error(R"({"quant_method": "gptq", "bits": 4, "group_size": 128, "checkpoint_format": "marlin"})", "'marlin'");
  expect_error(R"({"quant_method": "gptq", "bits": 4, "group_size": 128, "is_marlin_format": true})", "'marlin'");
  expect_error(R"({"quant_method": "gptq", "bits": 3, "group_size": 128})", "3-bit GPTQ");
  expect_error(R"({"quant_method": "gptq", "bits": 4, "group_size": 128, "dynamic": {"-:.*": {}}})", "dynamic");
  expect_error(R"({"quant_method": "gptq", "bits": 4, "group_size": -7})", "group size");
}

TEST(GptqConfig, QuantizeConfigJsonBesideConfig) {
  testing::TempDir dir;
  ASSERT_TRUE(write_text_file(dir.sub("quantize_config.json"),
                              R"({"bits": 4, "group_size": 64, "desc_act": false, "sym": true})").is_ok());
  Result<QuantConfig> c = parse_quant_config("", dir.path());
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->method, QuantMethod::kGptq);
  EXPECT_EQ(c->scheme.group_size, 64);
  EXPECT_NE(c->source.find("quantize_config.json"), std::string::npos);
  // The config.json block wins when both exist.
  Result<QuantConfig> a = parse_quant_config(R"({"quant_method": "awq", "bits": 4, "group_size": 128,
                                                 "zero_point": true, "version": "gemm"})", dir.path());
  ASSERT_TRUE(a.is_ok());
  EXPECT_EQ(a->method, QuantMethod::kAwq);
  ASSERT_TRUE(write_text_file(dir.sub("quantize_config.json"), R"({"bits": 4, "group_size": 64, "checkpoint_format":
                                                                  "marlin"})").is_ok());
  expect_error("", "'marlin'", dir.path());
  // load_quant_config reads config.json first.
  ASSERT_TRUE(write_text_file(dir.sub("config.json"), R"({"architectures": ["LlamaForCausalLM"]})").is_ok());
  expect_error("", "'marlin'", dir.path());
  Result<QuantConfig> l = load_quant_config(dir.path());
  ASSERT_FALSE(l.is_ok());
  EXPECT_NE(l.status().message().find("quantize_config.json"), std::string::npos) << l.status().to_string();
}

TEST(AwqConfig, GemmOnly) {
  QuantConfig c = parse_ok(R"({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true,
                               "version": "gemm", "modules_to_not_convert": ["visual"]})");
  EXPECT_EQ(c.method, QuantMethod::kAwq);
  auto s = c.scheme_for("model.layers.0.mlp.up_proj");
  ASSERT_TRUE(s.has_value());
  EXPECT_FALSE(s->symmetric);
  EXPECT_EQ(s->group_size, 128);
  EXPECT_FALSE(c.scheme_for("model.visual.blocks.0.proj").has_value());
  EXPECT_FALSE(c.scheme_for("lm_head").has_value());
  QuantConfig native = parse_ok(R"({"quant_method": "awq", "w_bit": 4, "q_group_size": 64, "zero_point": true,
                                    "version": "GEMM"})");
  EXPECT_EQ(native.scheme.group_size, 64);
  for (const char* v : {"gemv", "gemv_fast", "marlin", "exllama", "ipex"})
    expect_error(std::string(R"({"quant_method": "awq", "bits": 4, "group_size": 128, "version": ")") + v + "\"}",
                 std::string("version '") + v + "'");
  expect_error(R"({"quant_method": "awq", "bits": 8, "group_size": 128})", "8-bit AWQ");
  expect_error(R"({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": false})", "zero points");
}

}  // namespace
}  // namespace nb::quant
