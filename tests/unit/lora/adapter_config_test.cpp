// adapter_config.json parsing and PEFT's module-matching rules.
//
// Truth: data/matching.json, written by PEFT 0.21.2 itself (gen_peft_fixtures.py): for each
// LoraConfig, the modules PEFT wrapped with their r / alpha / scaling. The hand-written cases
// below pin the individual rules (formats.md §6.1) with values worked out from Python `re`.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "core/mmap.h"
#include "lora/adapter_config.h"
#include "lora_test_util.h"

namespace nb {
namespace {

using lora_test::fake_base;
using lora_test::matching_base;

AdapterConfig parse_ok(const std::string& json) {
  Result<AdapterConfig> r = parse_adapter_config(json, "test/adapter_config.json");
  EXPECT_TRUE(r.is_ok()) << r.status().to_string() << "\n" << json;
  return r.is_ok() ? std::move(r).value() : AdapterConfig{};
}

Status parse_err(const std::string& json) {
  Result<AdapterConfig> r = parse_adapter_config(json, "test/adapter_config.json");
  EXPECT_FALSE(r.is_ok()) << "accepted: " << json;
  return r.is_ok() ? Status::ok() : r.status();
}

std::set<std::string> targeted(const AdapterConfig& c, const std::vector<BaseModule>& base) {
  std::set<std::string> out;
  for (const BaseModule& m : base)
    if (is_targeted(c, m)) out.insert(m.name);
  return out;
}

TEST(AdapterConfig, MatchesPeftOnFixtureModel) {
  std::string path = std::string(NIBBLE_SOURCE_DIR) + "/tests/unit/lora/data/matching.json";
  Result<std::string> text = read_text_file(path);
  ASSERT_TRUE(text.is_ok()) << text.status().to_string();
  auto j = nlohmann::ordered_json::parse(*text);
  std::vector<BaseModule> base = matching_base();
  // The fixture model's LoRA-able modules are exactly our fake base.
  ASSERT_EQ(j["modules"].size(), base.size());
  for (const auto& m : j["modules"]) {
    const BaseModule& b = lora_test::find_module(base, m["name"].get<std::string>());
    EXPECT_EQ(b.name, m["name"].get<std::string>());
    EXPECT_EQ(b.is_embedding(), m["kind"] == "embedding") << b.name;
    EXPECT_EQ(b.out, m["out"].get<int64_t>()) << b.name;
    EXPECT_EQ(b.in, m["in"].get<int64_t>()) << b.name;
  }
  ASSERT_GE(j["cases"].size(), 15u);
  for (const auto& c : j["cases"]) {
    std::string cfg_text = c["config"].dump();
    SCOPED_TRACE(cfg_text);
    AdapterConfig cfg = parse_ok(cfg_text);
    std::set<std::string> expected;
    for (auto it = c["wrapped"].begin(); it != c["wrapped"].end(); ++it) expected.insert(it.key());
    EXPECT_EQ(targeted(cfg, base), expected);
    for (auto it = c["wrapped"].begin(); it != c["wrapped"].end(); ++it) {
      ModuleLoraSpec s = lora_spec_for(cfg, it.key());
      EXPECT_EQ(s.rank, it.value()["r"].get<int>()) << it.key();
      EXPECT_DOUBLE_EQ(s.alpha, it.value()["alpha"].get<double>()) << it.key();
      EXPECT_NEAR(s.scaling, it.value()["scaling"].get<double>(), 1e-6) << it.key();
    }
  }
}

TEST(AdapterConfig, ScalingPlainAndRsLora) {
  AdapterConfig c = parse_ok(R"({"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj"]})");
  EXPECT_FLOAT_EQ(lora_spec_for(c, "model.layers.0.self_attn.q_proj").scaling, 2.0f);
  c = parse_ok(R"({"r":8,"lora_alpha":16,"use_rslora":true,"target_modules":["q_proj"]})");
  EXPECT_NEAR(lora_spec_for(c, "model.layers.0.self_attn.q_proj").scaling, 16.0 / std::sqrt(8.0), 1e-6);
  c = parse_ok(R"({"r":4,"lora_alpha":12.5,"target_modules":["q_proj"]})");
  EXPECT_FLOAT_EQ(lora_spec_for(c, "model.layers.0.self_attn.q_proj").scaling, 3.125f);
  // Defaults (formats.md §6.1): r 8, lora_alpha 8.
  c = parse_ok(R"({"target_modules":["q_proj"]})");
  EXPECT_EQ(c.r, 8);
  EXPECT_FLOAT_EQ(lora_spec_for(c, "x.q_proj").scaling, 1.0f);
}

TEST(AdapterConfig, RankPatternAnchoringAndOrder) {
  // re.match(r"(.*\.)?(q_proj)$", name): q_proj must be a whole last segment.
  AdapterConfig c = parse_ok(R"({"r":8,"lora_alpha":8,"target_modules":["q_proj"],"rank_pattern":{"q_proj":4}})");
  EXPECT_EQ(lora_spec_for(c, "model.layers.0.self_attn.q_proj").rank, 4);
  EXPECT_EQ(lora_spec_for(c, "model.layers.0.self_attn.qq_proj").rank, 8);
  EXPECT_EQ(lora_spec_for(c, "model.layers.0.self_attn.q_proj_x").rank, 8);
  EXPECT_EQ(lora_spec_for(c, "q_proj").rank, 4);

  // A layer-specific key, and JSON object order decides between overlapping keys.
  c = parse_ok(R"({"r":8,"target_modules":["q_proj"],
                   "rank_pattern":{"layers.1.self_attn.q_proj":2,"q_proj":4}})");
  EXPECT_EQ(lora_spec_for(c, "model.layers.1.self_attn.q_proj").rank, 2);
  EXPECT_EQ(lora_spec_for(c, "model.layers.0.self_attn.q_proj").rank, 4);
  EXPECT_EQ(lora_spec_for(c, "model.layers.1.self_attn.q_proj").rank_key, "layers.1.self_attn.q_proj");
  c = parse_ok(R"({"r":8,"target_modules":["q_proj"],
                   "rank_pattern":{"q_proj":4,"layers.1.self_attn.q_proj":2}})");
  EXPECT_EQ(lora_spec_for(c, "model.layers.1.self_attn.q_proj").rank, 4);

  // alpha_pattern follows the same rules, independently of rank_pattern.
  c = parse_ok(R"({"r":4,"lora_alpha":8,"target_modules":["q_proj","k_proj"],
                   "rank_pattern":{"k_proj":2},"alpha_pattern":{"layers\\.2\\..*":1,"q_proj":32}})");
  ModuleLoraSpec s = lora_spec_for(c, "model.layers.2.self_attn.q_proj");
  EXPECT_EQ(s.rank, 4);
  EXPECT_DOUBLE_EQ(s.alpha, 1.0);
  EXPECT_FLOAT_EQ(s.scaling, 0.25f);
  s = lora_spec_for(c, "model.layers.0.self_attn.q_proj");
  EXPECT_FLOAT_EQ(s.scaling, 8.0f);
  s = lora_spec_for(c, "model.layers.0.self_attn.k_proj");
  EXPECT_EQ(s.rank, 2);
  EXPECT_FLOAT_EQ(s.scaling, 4.0f);
}

TEST(AdapterConfig, TargetListRegexAllLinear) {
  std::vector<BaseModule> base = matching_base();
  AdapterConfig c = parse_ok(R"({"target_modules":["q_proj","model.layers.2.mlp.down_proj"]})");
  EXPECT_EQ(targeted(c, base),
            (std::set<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj",
                                   "model.layers.2.self_attn.q_proj", "model.layers.2.mlp.down_proj"}));
  // A string is re.fullmatch: "q_proj" alone matches no full module name.
  c = parse_ok(R"({"target_modules":"q_proj"})");
  EXPECT_TRUE(targeted(c, base).empty());
  c = parse_ok(R"({"target_modules":"model\\.layers\\.[01]\\.self_attn\\.(q|v)_proj"})");
  EXPECT_EQ(targeted(c, base),
            (std::set<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                   "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}));
  c = parse_ok(R"({"target_modules":"ALL-LINEAR"})");
  std::set<std::string> all = targeted(c, base);
  EXPECT_EQ(all.size(), 3u * 7u + 3u);  // 7 projections per layer + qq_proj + 2 experts
  EXPECT_FALSE(all.count("lm_head"));
  EXPECT_FALSE(all.count("model.embed_tokens"));
}

TEST(AdapterConfig, ExcludeModules) {
  std::vector<BaseModule> base = fake_base();
  AdapterConfig c =
      parse_ok(R"({"target_modules":["q_proj","v_proj"],"exclude_modules":["layers.1.self_attn.q_proj"]})");
  EXPECT_EQ(targeted(c, base).size(), 5u);
  EXPECT_FALSE(targeted(c, base).count("model.layers.1.self_attn.q_proj"));
  c = parse_ok(R"({"target_modules":["q_proj","v_proj"],"exclude_modules":".*\\.v_proj"})");
  EXPECT_EQ(targeted(c, base).size(), 3u);
  // exclude_modules is never "all-linear": the string is a regex that matches nothing here.
  c = parse_ok(R"({"target_modules":["q_proj"],"exclude_modules":"all-linear"})");
  EXPECT_EQ(targeted(c, base).size(), 3u);
}

TEST(AdapterConfig, LayersToTransform) {
  std::vector<BaseModule> base = matching_base();
  AdapterConfig c = parse_ok(R"({"target_modules":["q_proj","gate_proj"],"layers_to_transform":1})");
  // Lazy layer regex: the expert index (experts.0) is not mistaken for the layer.
  EXPECT_EQ(targeted(c, base),
            (std::set<std::string>{"model.layers.1.self_attn.q_proj", "model.layers.1.mlp.gate_proj",
                                   "model.layers.1.mlp.experts.0.gate_proj",
                                   "model.layers.1.mlp.experts.1.gate_proj"}));
  EXPECT_EQ(layer_index_of(c, "model.layers.1.mlp.experts.0.gate_proj"), std::optional<int>(1));
  c = parse_ok(R"({"target_modules":["q_proj"],"layers_to_transform":[0,2],"layers_pattern":"layers"})");
  EXPECT_EQ(targeted(c, base),
            (std::set<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.2.self_attn.q_proj"}));
  // A pattern that names no segment of these modules: nothing qualifies.
  c = parse_ok(R"({"target_modules":["q_proj"],"layers_to_transform":[0,1,2],"layers_pattern":"h"})");
  EXPECT_TRUE(targeted(c, base).empty());
  // An exact full name bypasses the layer filter; an empty list means all layers.
  c = parse_ok(R"({"target_modules":["q_proj","model.layers.2.self_attn.v_proj"],"layers_to_transform":[0]})");
  EXPECT_EQ(targeted(c, base),
            (std::set<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.2.self_attn.v_proj"}));
  c = parse_ok(R"({"target_modules":["q_proj"],"layers_to_transform":[]})");
  EXPECT_EQ(targeted(c, base).size(), 3u);
  // Layer-less modules never pass a layer filter.
  c = parse_ok(R"({"target_modules":["embed_tokens","q_proj"],"layers_to_transform":[0]})");
  EXPECT_EQ(targeted(c, base), (std::set<std::string>{"model.layers.0.self_attn.q_proj"}));
}

TEST(AdapterConfig, ModulesToSaveAreNeverTargets) {
  std::vector<BaseModule> base = fake_base();
  AdapterConfig c = parse_ok(R"({"target_modules":["q_proj","lm_head"],"modules_to_save":["lm_head"]})");
  EXPECT_FALSE(targeted(c, base).count("lm_head"));
  EXPECT_EQ(targeted(c, base).size(), 3u);
  EXPECT_TRUE(is_module_to_save(c, "lm_head"));
  EXPECT_FALSE(is_module_to_save(c, "model.embed_tokens"));
  c = parse_ok(R"({"target_modules":["q_proj"],"modules_to_save":["embed_tokens"]})");
  EXPECT_TRUE(is_module_to_save(c, "model.embed_tokens"));
}

TEST(AdapterConfig, RefusesUnsupportedFeatures) {
  struct Case {
    const char* json;
    const char* needle;
  };
  const Case cases[] = {
      {R"({"target_modules":["q_proj"],"use_dora":true})", "DoRA"},
      {R"({"target_modules":["q_proj"],"bias":"all"})", "bias='all' trains base biases"},
      {R"({"target_modules":["q_proj"],"bias":"lora_only"})", "bias='lora_only'"},
      {R"({"target_modules":["q_proj"],"lora_bias":true})", "lora_bias"},
      {R"({"target_modules":["q_proj"],"fan_in_fan_out":true})", "fan_in_fan_out"},
      {R"({"target_modules":["q_proj"],"layer_replication":[[0,2],[1,3]]})", "layer_replication"},
      {R"({"target_modules":["q_proj"],"trainable_token_indices":[1,2]})", "trainable_token_indices"},
      {R"({"target_modules":["q_proj"],"alora_invocation_tokens":[5]})", "alora"},
      {R"({"target_modules":["q_proj"],"use_qalora":true})", "QALoRA"},
      {R"({"peft_type":"PREFIX_TUNING","target_modules":["q_proj"]})", "peft_type is 'PREFIX_TUNING'"},
  };
  for (const Case& c : cases) {
    Status s = parse_err(c.json);
    EXPECT_EQ(s.code(), ErrorCode::kUnsupported) << c.json << " -> " << s.to_string();
    EXPECT_NE(s.message().find(c.needle), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("test/adapter_config.json"), std::string::npos) << s.message();
  }
  // Inference-neutral and unknown fields are ignored; empty target_parameters is fine.
  parse_ok(R"({"target_modules":["q_proj"],"lora_dropout":0.1,"task_type":"CAUSAL_LM","init_lora_weights":"gaussian",
               "target_parameters":[],"trainable_token_indices":null,"some_future_field":{"x":1}})");
}

// PEFT >= 0.17: LoRA on fused 3-D expert parameters; target_modules may then be empty or null.
TEST(AdapterConfig, TargetParameters) {
  AdapterConfig c = parse_ok(R"({"target_modules":[],"target_parameters":["mlp.experts.gate_up_proj","mlp.gate.weight"],
                                 "peft_version":"0.21.2"})");
  EXPECT_EQ(c.target_parameters, (std::vector<std::string>{"mlp.experts.gate_up_proj", "mlp.gate.weight"}));
  EXPECT_EQ(c.peft_version, "0.21.2");
  BaseModule param;
  param.kind = BaseModule::Kind::kExpertParam;
  param.name = "model.layers.3.mlp.experts.gate_up_proj";
  EXPECT_TRUE(is_targeted(c, param));
  param.name = "model.layers.3.mlp.experts.down_proj";
  EXPECT_FALSE(is_targeted(c, param));
  param.name = "model.layers.3.mlp.shared_experts.gate_up_proj";  // suffix must start at a '.'
  EXPECT_FALSE(is_targeted(c, param));
  // a 2-D parameter targets the Linear of that module
  EXPECT_TRUE(is_targeted(c, BaseModule::make("model.layers.3.mlp.gate", BaseModule::Kind::kLinear, 8, 16, 3)));
  EXPECT_FALSE(is_targeted(c, BaseModule::make("model.layers.3.mlp.gate_proj", BaseModule::Kind::kLinear, 8, 16, 3)));
  parse_ok(R"({"target_modules":null,"target_parameters":["mlp.experts.down_proj"]})");
  Status s = parse_err(R"({"target_modules":null,"target_parameters":[]})");
  EXPECT_NE(s.message().find("names no modules"), std::string::npos) << s.to_string();
}

TEST(AdapterConfig, RejectsMalformedConfigs) {
  struct Case {
    const char* json;
    const char* needle;
  };
  const Case cases[] = {
      {R"({"target_modules":["q_proj"],)", "invalid JSON"},
      {R"([1,2])", "expected a JSON object"},
      {R"({"r":8})", "target_modules is missing"},
      {R"({"target_modules":null})", "target_modules is missing"},
      {R"({"target_modules":["q_proj"],"r":"8"})", "field 'r': expected an integer, got string \"8\""},
      {R"({"target_modules":["q_proj"],"r":0})", "expected a positive rank, got 0"},
      {R"({"target_modules":["q_proj"],"r":2.5})", "field 'r': expected an integer"},
      {R"({"target_modules":["q_proj"],"lora_alpha":"16"})", "field 'lora_alpha': expected a number"},
      {R"({"target_modules":[1]})", "field 'target_modules[]': expected a string"},
      {R"({"target_modules":["q_proj"],"rank_pattern":{"q_proj":-1}})", "rank_pattern['q_proj']"},
      {R"({"target_modules":["q_proj"],"rank_pattern":[1]})", "field 'rank_pattern': expected an object"},
      {R"({"target_modules":["q_proj"],"rank_pattern":{"q_(proj":4}})", "invalid regular expression"},
      {R"({"target_modules":"(unclosed"})", "invalid regular expression"},
      {R"({"target_modules":"model\\..*q_proj","layers_to_transform":[0]})", "layers_to_transform cannot be used"},
      {R"({"target_modules":"all-linear","layers_pattern":"layers"})", "layers_pattern cannot be used"},
      {R"({"target_modules":["q_proj"],"layers_to_transform":["0"]})", "layers_to_transform[]"},
      {R"({"target_modules":["q_proj"],"use_rslora":"yes"})", "field 'use_rslora': expected true or false"},
      {R"({"target_modules":["q_proj"],"modules_to_save":"lm_head"})", "field 'modules_to_save': expected a list"},
  };
  for (const Case& c : cases) {
    Status s = parse_err(c.json);
    EXPECT_NE(s.message().find(c.needle), std::string::npos) << c.json << " -> " << s.message();
  }
}

}  // namespace
}  // namespace nb
