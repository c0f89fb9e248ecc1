// A step that fails gives back the KV blocks it reserved, whatever failed: a bad token id in a later
// row, a sequence past the model length, a full cache. The sequences stay usable afterwards.
#include <gtest/gtest.h>

#include "backends/cpu/cpu_backend.h"
#include "engine/engine.h"
#include "ops/device_buffer.h"

namespace nb::engine {
namespace {

const std::string kTiny = std::string(NIBBLE_SOURCE_DIR) + "/tests/data/models/qwen3-ct-w4g64-asym";

std::unique_ptr<Engine> tiny(int64_t kv_tokens) {
  EngineOptions o;
  o.model_dir = kTiny;
  o.verbose = false;
  o.max_kv_tokens = kv_tokens;
  auto e = Engine::create(o);
  EXPECT_TRUE(e.is_ok()) << e.status().to_string();
  return e.is_ok() ? std::move(*e) : nullptr;
}

TEST(StepErrors, FailedStepsReturnTheirBlocks) {
  auto e = tiny(256);
  ASSERT_TRUE(e);
  const int free0 = e->free_kv_blocks();
  // Sequence 1 holds 20 tokens (2 blocks of 16) before the failing steps.
  ASSERT_TRUE(e->step({{1, std::vector<int32_t>(20, 5), "", false}}).is_ok());
  const int free1 = e->free_kv_blocks();
  EXPECT_EQ(free1, free0 - 2);
  // A bad id in the second row: row 1 (growing seq 1 by 30) and row 2 (new seq 2) both reserved.
  auto bad = e->step({{1, std::vector<int32_t>(30, 5), "", false}, {2, {7, 8, 100000}, "", false}});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("100000"), std::string::npos) << bad.status().to_string();
  EXPECT_EQ(e->free_kv_blocks(), free1) << "the failed step's reservations went back";
  // Past the model length (256 here: max_position_embeddings).
  auto longer = e->step({{3, std::vector<int32_t>(300, 5), "", false}});
  ASSERT_FALSE(longer.is_ok());
  EXPECT_NE(longer.status().message().find("300"), std::string::npos) << longer.status().to_string();
  EXPECT_EQ(e->free_kv_blocks(), free1);
  // Sequence 1 still continues from its 20 tokens.
  auto ok = e->step({{1, {9}, "", false}});
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  e->release_sequence(1);
  EXPECT_EQ(e->free_kv_blocks(), free0);
}

TEST(StepErrors, FullCacheIsNamedAndReturnsBlocks) {
  auto e = tiny(64);  // 4 blocks
  ASSERT_TRUE(e);
  const int free0 = e->free_kv_blocks();
  ASSERT_TRUE(e->step({{1, std::vector<int32_t>(40, 5), "", false}}).is_ok());  // 3 blocks
  auto full = e->step({{2, std::vector<int32_t>(10, 5), "", false}, {3, std::vector<int32_t>(20, 5), "", false}});
  ASSERT_FALSE(full.is_ok());
  EXPECT_NE(full.status().message().find("KV cache full"), std::string::npos) << full.status().to_string();
  EXPECT_EQ(e->free_kv_blocks(), free0 - 3);
  e->release_sequence(1);
  EXPECT_EQ(e->free_kv_blocks(), free0);
}

// The fallible allocation behind the KV cache, step buffers and adapter uploads: memory that is not
// there is an error naming the size, and the backend keeps allocating afterwards.
TEST(StepErrors, MissingMemoryIsAnError) {
  cpu::CpuBackend b(false);
  auto huge = ops::DeviceBuffer::create(b, size_t{1} << 63);
  ASSERT_FALSE(huge.is_ok());
  EXPECT_NE(huge.status().message().find("out of cpu memory"), std::string::npos) << huge.status().to_string();
  EXPECT_NE(huge.status().message().find("GiB requested"), std::string::npos) << huge.status().to_string();
  auto small = ops::DeviceBuffer::create(b, 1000);
  ASSERT_TRUE(small.is_ok()) << small.status().to_string();
  EXPECT_EQ(small->bytes(), 1000u);
  const float x[4] = {1, 2, 3, 4};
  auto up = ops::try_upload_buffer(b, x, sizeof(x));
  ASSERT_TRUE(up.is_ok());
  EXPECT_EQ(up->as<float>()[2], 3.0f);
}

}  // namespace
}  // namespace nb::engine
