// The bundled demo models (models/demo, the dense Qwen3; models/demo-moe, the Qwen2-MoE with a
// shared expert): the tokenizer reproduces the prompt ids transformers used, and nibble reproduces
// the greedy continuations of transformers + peft on the dequantized INT4 model for the base and
// every adapter — all rows in one mixed batch.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/mmap.h"
#include "engine/engine.h"
#include "io/tokenizer/tokenizer.h"

namespace nb {
namespace {

class DemoModel : public ::testing::TestWithParam<std::string> {};

TEST_P(DemoModel, GreedyContinuationsMatchTransformers) {
  const std::string kDemo = std::string(NIBBLE_SOURCE_DIR) + "/models/" + GetParam();
  auto text = read_text_file(kDemo + "/golden.json");
  ASSERT_TRUE(text.is_ok()) << text.status().to_string();
  auto g = nlohmann::json::parse(*text);
  auto tok = Tokenizer::load(kDemo);
  ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
  for (const auto& p : g["prompts"]) {
    if (p["text"].is_null()) continue;
    auto ids = tok->encode(p["text"].get<std::string>(), true, true);
    ASSERT_TRUE(ids.is_ok());
    EXPECT_EQ(*ids, p["ids"].get<std::vector<int32_t>>()) << p["name"];
  }
  engine::EngineOptions o;
  o.model_dir = kDemo;
  o.verbose = false;
  auto e = engine::Engine::create(o);
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  for (const auto& run : g["runs"]) {
    if (run["adapter"].is_null()) continue;
    const std::string a = run["name"].get<std::string>();
    Status s = (*e)->load_adapter(a, kDemo + "/adapters/" + a);
    ASSERT_TRUE(s.is_ok()) << s.to_string();
  }
  std::vector<engine::GenerationRequest> reqs;
  std::vector<const nlohmann::json*> want;
  for (const auto& run : g["runs"]) {
    for (size_t i = 0; i < g["prompts"].size(); ++i) {
      engine::GenerationRequest r;
      r.prompt = g["prompts"][i]["ids"].get<std::vector<int32_t>>();
      r.max_tokens = g["steps"].get<int>();
      r.adapter = run["adapter"].is_null() ? "" : run["name"].get<std::string>();
      reqs.push_back(r);
      want.push_back(&run["continuations"][i]);
    }
  }
  auto out = (*e)->generate(reqs);
  ASSERT_TRUE(out.is_ok()) << out.status().to_string();
  int compared = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto ids = (*want[i])["ids"].get<std::vector<int32_t>>();
    auto margins = (*want[i])["margins"].get<std::vector<double>>();
    for (size_t t = 0; t < ids.size(); ++t) {
      if (margins[t] < 1e-2) break;  // a near-tie in the reference decides nothing after it
      ASSERT_EQ((*out)[i].tokens[t], ids[t]) << "row " << i << " step " << t;
      ++compared;
    }
  }
  EXPECT_GT(compared, 35 * static_cast<int>(g["runs"].size()));  // of 80-100 steps per run
}

INSTANTIATE_TEST_SUITE_P(Bundled, DemoModel, ::testing::Values("demo", "demo-moe"),
                         [](const auto& info) { return info.param == "demo" ? std::string("dense") : std::string("moe"); });

}  // namespace
}  // namespace nb
