// Bad MoE checkpoints and adapters get named errors (sizes come from the config and are checked
// against every tensor; an adapter for experts must fit the model's experts). Each case copies a
// golden fixture into a temporary directory and breaks one thing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/mmap.h"
#include "engine/engine.h"

namespace nb {
namespace {

namespace fs = std::filesystem;
const std::string kModels = std::string(NIBBLE_SOURCE_DIR) + "/tests/data/models";

// A copy of fixture `name` whose config.json was edited by `patch`.
std::string patched_copy(const std::string& name, const std::function<void(nlohmann::json&)>& patch) {
  std::string dir = ::testing::TempDir() + "nb_moe_err_" + name + "_" + std::to_string(::getpid()) + "_" +
                    std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
                    ::testing::UnitTest::GetInstance()->current_test_info()->name();
  fs::remove_all(dir);
  fs::copy(kModels + "/" + name, dir, fs::copy_options::recursive);
  auto text = read_text_file(dir + "/config.json");
  EXPECT_TRUE(text.is_ok());
  nlohmann::json j = nlohmann::json::parse(*text);
  patch(j);
  EXPECT_TRUE(write_text_file(dir + "/config.json", j.dump(2)).is_ok());
  return dir;
}

Status create_status(const std::string& dir) {
  engine::EngineOptions o;
  o.model_dir = dir;
  o.verbose = false;
  return engine::Engine::create(o).status();
}

std::unique_ptr<engine::Engine> create(const std::string& dir) {
  engine::EngineOptions o;
  o.model_dir = dir;
  o.verbose = false;
  auto e = engine::Engine::create(o);
  EXPECT_TRUE(e.is_ok()) << e.status().to_string();
  return e.is_ok() ? std::move(*e) : nullptr;
}

#define EXPECT_MESSAGE(status, needle)                                                      \
  do {                                                                                      \
    Status s_ = (status);                                                                   \
    EXPECT_FALSE(s_.is_ok()) << "expected an error containing: " << (needle);               \
    EXPECT_NE(s_.message().find(needle), std::string::npos) << s_.to_string();              \
  } while (0)

// The router [E, hidden] is the first tensor that knows the expert count.
TEST(MoeCheckpointErrors, ExpertCountDisagreesWithTheCheckpoint) {
  std::string dir = patched_copy("mixtral-ct-w4g32-sym", [](nlohmann::json& j) { j["num_local_experts"] = 6; });
  EXPECT_MESSAGE(create_status(dir), "block_sparse_moe.gate.weight: expected shape [6, 64] ([out, in] from the model config), got [8, 64]");
  dir = patched_copy("qwen3moe-ct-w4g64-asym", [](nlohmann::json& j) { j["num_experts"] = 10; });
  EXPECT_MESSAGE(create_status(dir), "mlp.gate.weight: expected shape [10, 64]");
}

TEST(MoeCheckpointErrors, ExpertWidthDisagreesWithTheCheckpoint) {
  // Mixtral's expert width is intermediate_size: 32 in the file.
  std::string dir = patched_copy("mixtral-ct-w4g32-sym", [](nlohmann::json& j) { j["intermediate_size"] = 48; });
  EXPECT_MESSAGE(create_status(dir), "block_sparse_moe.experts.0.w1");
  dir = patched_copy("qwen2moe-gptq-descact", [](nlohmann::json& j) { j["shared_expert_intermediate_size"] = 96; });
  EXPECT_MESSAGE(create_status(dir), "shared_expert.gate_proj");
}

TEST(MoeCheckpointErrors, FusedExpertTensorDisagreesWithTheConfig) {
  std::string dir = patched_copy("deepseekv2lite-bf16-fused", [](nlohmann::json& j) {
    j["moe_intermediate_size"] = j["moe_intermediate_size"].get<int>() + 8;
  });
  EXPECT_MESSAGE(create_status(dir), "gate_up_proj': expected shape");
}

TEST(MoeAdapterErrors, ExpertAdapterOnADenseModel) {
  auto e = create(kModels + "/qwen2-bf16");
  ASSERT_TRUE(e);
  EXPECT_MESSAGE(e->load_adapter("x", kModels + "/qwen2moe-gptq-descact/adapters/experts_2d"), "no experts");
  EXPECT_MESSAGE(e->load_adapter("y", kModels + "/qwen3moe-ct-w4g64-asym/adapters/experts_3d"), "no experts");
  EXPECT_TRUE(e->adapters().empty());
}

TEST(MoeAdapterErrors, FusedAdapterForAnotherExpertCount) {
  // mixtral-ct has 8 experts, mixtral-bf16-fused 4: the fused factors' r * E rows do not fit.
  auto e = create(kModels + "/mixtral-bf16-fused");
  ASSERT_TRUE(e);
  Status s = e->load_adapter("x", kModels + "/mixtral-ct-w4g32-sym/adapters/experts_3d");
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("experts"), std::string::npos) << s.to_string();
  EXPECT_TRUE(e->adapters().empty());
}

TEST(MoeAdapterErrors, DenseMlpAdapterOnAnMoeLayer) {
  // attn_mlp of the dense Llama fixture targets mlp.gate_proj of layer 0, an MoE layer here.
  auto e = create(kModels + "/qwen3moe-ct-w4g64-asym");
  ASSERT_TRUE(e);
  EXPECT_MESSAGE(e->load_adapter("x", kModels + "/llama-ct-w4g32-sym/adapters/attn_mlp"), "model.layers.0.mlp.");
}

}  // namespace
}  // namespace nb
