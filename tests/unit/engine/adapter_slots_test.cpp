// Adapters in the engine: more adapters than device slots across consecutive steps (slots are taken
// back from idle adapters and reinstalled), a bounded CPU cache (evicted adapters are reloaded from
// disk when used again), and a batch that needs more adapters than there are slots. Each engine's
// logits are compared with a fresh engine that has room for every adapter and runs the same batches.
// The tiny qwen2-bf16 fixture model and its three PEFT adapters (tests/data/models); CPU always, CUDA
// when a usable GPU is present (skipped otherwise).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace nb::engine {
namespace {

const std::string kModel = std::string(NIBBLE_SOURCE_DIR) + "/tests/data/models/qwen2-bf16";
const std::vector<std::string> kAdapters = {"attn_mlp", "embed_head", "qv16"};

// Batches of (adapter, prompt) rows; each step uses fresh sequences so steps do not share KV state.
using Batch = std::vector<std::pair<std::string, std::vector<int32_t>>>;
const std::vector<int32_t> kP1 = {3, 17, 45, 101, 7, 150, 2, 88}, kP2 = {9, 120, 33}, kP3 = {64, 5};

class AdapterSlotsTest : public ::testing::TestWithParam<std::string> {
 protected:
  // Null (test skipped) when the device is unavailable.
  std::unique_ptr<Engine> make(int max_loras, int max_cpu_loras = 0) {
    EngineOptions o;
    o.model_dir = kModel;
    o.device = GetParam();
    o.verbose = false;
    o.max_loras = max_loras;
    o.max_cpu_loras = max_cpu_loras;
    auto e = Engine::create(o);
    if (!e.is_ok() && o.device == "cuda" && e.status().message().find("CUDA") != std::string::npos) return nullptr;
    EXPECT_TRUE(e.is_ok()) << e.status().to_string();
    return e.is_ok() ? std::move(*e) : nullptr;
  }
  std::unique_ptr<Engine> fresh_with_all() {
    auto e = make(8);
    for (const std::string& a : kAdapters) {
      if (e) {
        EXPECT_TRUE(e->load_adapter(a, dir_of(a)).is_ok());
      }
    }
    return e;
  }
  static std::string dir_of(const std::string& adapter) { return kModel + "/adapters/" + adapter; }

  // All logits of every row of `batch`, as one step.
  Result<std::vector<std::vector<float>>> run(Engine& e, const Batch& batch) {
    std::vector<Engine::StepInput> in;
    for (const auto& [adapter, prompt] : batch) in.push_back({next_seq_++, prompt, adapter, true});
    auto out = e.step(in);
    for (const auto& i : in) e.release_sequence(i.seq);
    return out;
  }
  // Same logits from both engines: the same kernels on the same batches. The CPU computes in F32
  // (equal up to 1e-5); on CUDA a kernel that reduces in a varying order could flip a bf16 rounding
  // somewhere, so 2.5% of the largest logit there — a wrong or missing adapter moves logits by
  // more than 1 on this fixture (tools/fixtures/README.md), about 25% of the largest.
  void expect_same(Engine& got, Engine& want, const Batch& batch, const std::string& what) {
    auto a = run(got, batch);
    auto b = run(want, batch);
    ASSERT_TRUE(a.is_ok()) << what << ": " << a.status().to_string();
    ASSERT_TRUE(b.is_ok()) << what << ": " << b.status().to_string();
    ASSERT_EQ(a->size(), b->size());
    for (size_t r = 0; r < a->size(); ++r) {
      ASSERT_EQ((*a)[r].size(), (*b)[r].size());
      double d = 0, largest = 0;
      for (size_t i = 0; i < (*a)[r].size(); ++i) {
        d = std::max(d, std::fabs(double{(*a)[r][i]} - (*b)[r][i]));
        largest = std::max(largest, std::fabs(double{(*b)[r][i]}));
      }
      const double tol = GetParam() == "cuda" ? 0.025 * largest : 1e-5;
      EXPECT_LE(d, tol) << what << " row " << r << " (adapter '" << batch[r].first << "')";
    }
  }
  int64_t next_seq_ = 1;
};

#define MAKE_OR_SKIP(var, ...)                                              \
  auto var = __VA_ARGS__;                                                   \
  if (!var) {                                                               \
    if (HasFailure()) return;                                               \
    GTEST_SKIP() << "no usable CUDA device";                                \
  }

TEST_P(AdapterSlotsTest, MoreAdaptersThanSlotsAcrossSteps) {
  MAKE_OR_SKIP(e, make(2));
  for (const std::string& a : kAdapters) ASSERT_TRUE(e->load_adapter(a, dir_of(a)).is_ok());
  EXPECT_EQ(e->adapters(), kAdapters);
  MAKE_OR_SKIP(ref, fresh_with_all());
  // Three adapters through two slots: every step after the first takes a slot from an idle adapter.
  const std::vector<Batch> steps = {
      {{"attn_mlp", kP1}, {"", kP2}},
      {{"qv16", kP1}, {"embed_head", kP2}},
      {{"attn_mlp", kP2}, {"qv16", kP3}, {"attn_mlp", kP1}},
      {{"embed_head", kP1}, {"", kP3}, {"attn_mlp", kP2}},
      {{"qv16", kP2}},
      {{"embed_head", kP3}, {"qv16", kP1}},
  };
  for (size_t s = 0; s < steps.size(); ++s) {
    expect_same(*e, *ref, steps[s], "step " + std::to_string(s));
    int in_slots = 0;
    for (const std::string& a : kAdapters) {
      const int slot = e->adapter_registry().slot_of(a);
      EXPECT_LT(slot, 2) << a;
      in_slots += slot >= 0;
    }
    EXPECT_EQ(in_slots, 2) << "step " << s;
  }
  // The slots hold the last batch's adapters; the other one was moved out.
  EXPECT_EQ(e->adapter_registry().slot_of("attn_mlp"), -1);
  // Decoding through generate: requests alternate between adapters in prefill (one per step), then
  // decode with two adapters in one batch.
  std::vector<GenerationRequest> reqs(3);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].prompt = i == 0 ? kP1 : kP2;
    reqs[i].max_tokens = 4;
    reqs[i].adapter = i == 1 ? "" : kAdapters[i];
  }
  auto g1 = e->generate(reqs);
  auto g2 = ref->generate(reqs);
  ASSERT_TRUE(g1.is_ok()) << g1.status().to_string();
  ASSERT_TRUE(g2.is_ok());
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ((*g1)[i].tokens.size(), 4u);
    // On CUDA a near-tie may break either way; the steps above compared the logits.
    if (GetParam() == "cpu") {
      EXPECT_EQ((*g1)[i].tokens, (*g2)[i].tokens) << "request " << i;
    }
  }
}

TEST_P(AdapterSlotsTest, CpuCacheEvictsAndReloadsFromDisk) {
  // Adapters copied to a scratch directory, so that one can be deleted to prove reloads read it.
  const std::string tmp = ::testing::TempDir() + "nb_engine_adapters_" + std::to_string(::getpid()) + "_" + GetParam();
  std::filesystem::remove_all(tmp);
  std::filesystem::create_directories(tmp);
  for (const std::string& a : kAdapters)
    std::filesystem::copy(dir_of(a), tmp + "/" + a, std::filesystem::copy_options::recursive);
  MAKE_OR_SKIP(e, make(1, 2));
  for (const std::string& a : kAdapters) ASSERT_TRUE(e->load_adapter(a, tmp + "/" + a).is_ok()) << a;
  const AdapterRegistry& reg = e->adapter_registry();
  // attn_mlp took the only slot at load; the third load evicted the least recently used adapter
  // that is not in a slot (embed_head).
  EXPECT_EQ(reg.slot_of("attn_mlp"), 0);
  EXPECT_FALSE(reg.is_resident("embed_head"));
  EXPECT_TRUE(reg.is_resident("qv16"));
  EXPECT_EQ(reg.resident().size(), 2u);
  MAKE_OR_SKIP(ref, fresh_with_all());
  expect_same(*e, *ref, {{"embed_head", kP1}, {"", kP2}}, "embed_head reloaded");
  EXPECT_TRUE(reg.is_resident("embed_head"));
  EXPECT_EQ(reg.resident().size(), 2u);
  expect_same(*e, *ref, {{"qv16", kP2}}, "qv16");
  expect_same(*e, *ref, {{"attn_mlp", kP3}}, "attn_mlp");
  EXPECT_EQ(reg.resident().size(), 2u);
  // An evicted adapter whose files are gone fails with the loader's error, and the engine goes on.
  const std::string evicted = reg.is_resident("embed_head") ? "qv16" : "embed_head";
  ASSERT_FALSE(reg.is_resident(evicted));
  std::filesystem::remove_all(tmp + "/" + evicted);
  auto bad = run(*e, {{evicted, kP1}});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find(evicted), std::string::npos) << bad.status().to_string();
  expect_same(*e, *ref, {{"attn_mlp", kP1}, {"", kP3}}, "after a failed reload");
  std::filesystem::remove_all(tmp);
}

TEST_P(AdapterSlotsTest, BatchNeedingMoreAdaptersThanSlotsFails) {
  MAKE_OR_SKIP(e, make(2));
  for (const std::string& a : kAdapters) ASSERT_TRUE(e->load_adapter(a, dir_of(a)).is_ok());
  auto r = run(*e, {{"attn_mlp", kP1}, {"embed_head", kP2}, {"qv16", kP3}, {"attn_mlp", kP3}});
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("3 distinct adapters"), std::string::npos) << r.status().to_string();
  EXPECT_NE(r.status().message().find("only 2 adapter slots"), std::string::npos) << r.status().to_string();
  // The same through generate; then the engine still serves batches that fit.
  std::vector<GenerationRequest> reqs(3);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].prompt = kP2;
    reqs[i].max_tokens = 2;
    reqs[i].adapter = kAdapters[i];
  }
  auto g = e->generate(reqs);
  ASSERT_FALSE(g.is_ok());
  // Refused before any prefill, naming both numbers.
  EXPECT_NE(g.status().message().find("3 distinct adapters"), std::string::npos) << g.status().to_string();
  EXPECT_NE(g.status().message().find("only 2 adapter slots"), std::string::npos) << g.status().to_string();
  MAKE_OR_SKIP(ref, fresh_with_all());
  expect_same(*e, *ref, {{"qv16", kP1}, {"embed_head", kP2}}, "after the failure");
  // Unknown adapters name the loaded ones.
  auto u = run(*e, {{"nope", kP1}});
  ASSERT_FALSE(u.is_ok());
  EXPECT_EQ(u.status().message(), "adapter 'nope' is not loaded; loaded: attn_mlp, embed_head, qv16");
}

TEST_P(AdapterSlotsTest, UnloadFreesTheSlotAndOptionsAreChecked) {
  MAKE_OR_SKIP(e, make(1));
  ASSERT_TRUE(e->load_adapter("attn_mlp", dir_of("attn_mlp")).is_ok());
  ASSERT_TRUE(e->load_adapter("qv16", dir_of("qv16")).is_ok());
  EXPECT_EQ(e->adapter_registry().slot_of("attn_mlp"), 0);
  EXPECT_EQ(e->adapter_registry().slot_of("qv16"), -1);
  EXPECT_FALSE(e->load_adapter("qv16", dir_of("qv16")).is_ok()) << "duplicate name";
  {
    auto held = e->acquire_adapter_slots({"attn_mlp", "", "attn_mlp"});
    ASSERT_TRUE(held.is_ok()) << held.status().to_string();
    EXPECT_EQ(held->slots(), (std::vector<int>{0, -1, 0}));
    EXPECT_FALSE(e->unload_adapter("attn_mlp").is_ok()) << "held by a batch";
    auto other = e->acquire_adapter_slots({"qv16"});
    EXPECT_FALSE(other.is_ok()) << "the only slot is held";
  }
  ASSERT_TRUE(e->unload_adapter("attn_mlp").is_ok());
  EXPECT_EQ(e->adapters(), (std::vector<std::string>{"qv16"}));
  auto held = e->acquire_adapter_slots({"qv16"});
  ASSERT_TRUE(held.is_ok()) << held.status().to_string();
  EXPECT_EQ(held->slots(), (std::vector<int>{0}));
  held->release();
  EXPECT_FALSE(e->unload_adapter("attn_mlp").is_ok()) << "already unloaded";

  EngineOptions o;
  o.model_dir = kModel;
  o.device = GetParam();
  o.verbose = false;
  o.max_loras = 4;
  o.max_cpu_loras = 2;
  auto bad = Engine::create(o);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("max_cpu_loras=2 must be at least max_loras=4"), std::string::npos)
      << bad.status().to_string();
}

INSTANTIATE_TEST_SUITE_P(Devices, AdapterSlotsTest, ::testing::Values("cpu", "cuda"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
}  // namespace nb::engine
