#include "engine/block_manager.h"

#include <gtest/gtest.h>

#include <set>

namespace nb::engine {
namespace {

TEST(BlockManager, ReservesGrowsAndReleases) {
  BlockManager bm(4, 16);
  ASSERT_TRUE(bm.reserve(1, 17).is_ok());  // 2 blocks
  EXPECT_EQ(bm.block_table(1).size(), 2u);
  EXPECT_EQ(bm.free_blocks(), 2);
  ASSERT_TRUE(bm.reserve(1, 32).is_ok());  // still 2
  EXPECT_EQ(bm.free_blocks(), 2);
  ASSERT_TRUE(bm.reserve(2, 20).is_ok());
  EXPECT_EQ(bm.free_blocks(), 0);
  // Slots are distinct across sequences and positions.
  std::set<int32_t> slots;
  for (int p = 0; p < 32; ++p) slots.insert(bm.slot(1, p));
  for (int p = 0; p < 20; ++p) slots.insert(bm.slot(2, p));
  EXPECT_EQ(slots.size(), 52u);
  Status full = bm.reserve(3, 1);
  EXPECT_EQ(full.code(), ErrorCode::kOutOfRange);
  EXPECT_NE(full.message().find("KV cache full"), std::string::npos);
  EXPECT_FALSE(bm.has(3));
  bm.release(1);
  EXPECT_EQ(bm.free_blocks(), 2);
  ASSERT_TRUE(bm.reserve(3, 30).is_ok());
  bm.release(2);
  bm.release(3);
  bm.release(99);  // unknown: ignored
  EXPECT_EQ(bm.free_blocks(), 4);
}

TEST(BlockManager, FailedGrowthKeepsExistingBlocks) {
  BlockManager bm(2, 4);
  ASSERT_TRUE(bm.reserve(7, 4).is_ok());
  EXPECT_FALSE(bm.reserve(7, 100).is_ok());
  EXPECT_EQ(bm.block_table(7).size(), 1u);
  EXPECT_EQ(bm.slot(7, 3), bm.block_table(7)[0] * 4 + 3);
}

}  // namespace
}  // namespace nb::engine
