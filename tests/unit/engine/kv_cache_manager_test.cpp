#include "engine/kv_cache_manager.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <random>
#include <set>
#include <unordered_set>

namespace nb::engine {
namespace {

uint64_t fresh_seed() {
  if (const char* s = std::getenv("NIBBLE_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) | rd();
}

std::vector<int32_t> random_tokens(std::mt19937_64& rng, size_t n) {
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(rng() % 50000);
  return t;
}

// Registers `block` as the first block of a sequence with these tokens.
uint64_t register_first(KvCacheManager& kv, int32_t block, const std::vector<int32_t>& tokens,
                        const std::string& adapter = "") {
  uint64_t h = KvCacheManager::hash_block(KvCacheManager::kRootHash, adapter, tokens);
  EXPECT_TRUE(kv.register_block(block, h, KvCacheManager::kRootHash, adapter, tokens));
  return h;
}

TEST(KvCacheManager, AllocatesFreeBlocksBeforeEvictingTheLeastRecentlyFreed) {
  uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int bs = 3;
  KvCacheManager kv(4, bs);
  std::vector<int32_t> b(4);
  for (auto& x : b) x = kv.allocate();
  EXPECT_EQ(std::set<int32_t>(b.begin(), b.end()).size(), 4u);
  EXPECT_EQ(kv.num_available(), 0);
  auto t0 = random_tokens(rng, bs), t1 = random_tokens(rng, bs);
  uint64_t h0 = register_first(kv, b[0], t0), h1 = register_first(kv, b[1], t1);
  for (int32_t x : b) kv.release(x);  // b[0] freed before b[1]
  EXPECT_EQ(kv.num_cached(), 2);
  EXPECT_EQ(kv.num_free(), 2);
  EXPECT_EQ(kv.num_used(), 0);
  ASSERT_TRUE(kv.check_invariants().is_ok());
  // The two unregistered blocks go first, and the cached ones stay findable.
  std::set<int32_t> got = {kv.allocate(), kv.allocate()};
  EXPECT_EQ(got, (std::set<int32_t>{b[2], b[3]}));
  EXPECT_EQ(kv.lookup(h0, KvCacheManager::kRootHash, "", t0), b[0]);
  EXPECT_EQ(kv.lookup(h1, KvCacheManager::kRootHash, "", t1), b[1]);
  // Then eviction, least recently freed first.
  EXPECT_EQ(kv.allocate(), b[0]);
  EXPECT_FALSE(kv.is_registered(b[0]));
  EXPECT_EQ(kv.lookup(h0, KvCacheManager::kRootHash, "", t0), -1);
  EXPECT_EQ(kv.lookup(h1, KvCacheManager::kRootHash, "", t1), b[1]);
  EXPECT_EQ(kv.allocate(), b[1]);
  EXPECT_EQ(kv.num_available(), 0);
  ASSERT_TRUE(kv.check_invariants().is_ok());
}

TEST(KvCacheManager, ReferenceCountsShareAndRelease) {
  uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  KvCacheManager kv(3, 4);
  int32_t x = kv.allocate();
  auto t = random_tokens(rng, 4);
  uint64_t h = register_first(kv, x, t, "kjv");
  kv.share(x);  // a second sequence hits the live block
  EXPECT_EQ(kv.ref_count(x), 2);
  EXPECT_EQ(kv.num_used(), 1);
  kv.release(x);
  EXPECT_EQ(kv.ref_count(x), 1);
  EXPECT_EQ(kv.num_cached(), 0);
  kv.release(x);
  EXPECT_EQ(kv.ref_count(x), 0);
  EXPECT_EQ(kv.num_cached(), 1);
  EXPECT_EQ(kv.num_available(), 3);
  // A hit on a cached block takes it out of the evictable pool.
  ASSERT_EQ(kv.lookup(h, KvCacheManager::kRootHash, "kjv", t), x);
  kv.share(x);
  EXPECT_EQ(kv.ref_count(x), 1);
  EXPECT_EQ(kv.num_cached(), 0);
  EXPECT_EQ(kv.num_available(), 2);
  int32_t y = kv.allocate(), z = kv.allocate();
  EXPECT_NE(y, x);
  EXPECT_NE(z, x);
  EXPECT_TRUE(kv.is_registered(x));
  ASSERT_TRUE(kv.check_invariants().is_ok());
}

TEST(KvCacheManager, LookupComparesContentNotOnlyTheHash) {
  uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  KvCacheManager kv(2, 5);
  int32_t x = kv.allocate();
  auto t = random_tokens(rng, 5);
  uint64_t parent = rng();
  uint64_t h = KvCacheManager::hash_block(parent, "a", t);
  ASSERT_TRUE(kv.register_block(x, h, parent, "a", t));
  EXPECT_EQ(kv.lookup(h, parent, "a", t), x);
  // The same hash with other content stands for a collision: never a hit.
  auto t2 = t;
  t2[static_cast<size_t>(rng() % 5)] ^= 1;
  EXPECT_EQ(kv.lookup(h, parent, "a", t2), -1);
  EXPECT_EQ(kv.lookup(h, parent, "b", t), -1);
  EXPECT_EQ(kv.lookup(h, parent + 1, "a", t), -1);
  EXPECT_EQ(kv.lookup(h + 1, parent, "a", t), -1);
}

TEST(KvCacheManager, DuplicateContentKeepsTheFirstCopyCached) {
  uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  KvCacheManager kv(2, 4);
  int32_t x = kv.allocate(), y = kv.allocate();
  auto t = random_tokens(rng, 4);
  uint64_t h = register_first(kv, x, t);
  EXPECT_FALSE(kv.register_block(y, h, KvCacheManager::kRootHash, "", t));
  EXPECT_FALSE(kv.is_registered(y));
  kv.release(y);
  EXPECT_EQ(kv.num_free(), 1);  // the duplicate is simply free
  kv.release(x);
  EXPECT_EQ(kv.num_cached(), 1);
  EXPECT_EQ(kv.lookup(h, KvCacheManager::kRootHash, "", t), x);
  ASSERT_TRUE(kv.check_invariants().is_ok());
}

TEST(KvCacheManager, HashSeparatesParentAdapterAndTokens) {
  uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto t = random_tokens(rng, 16);
  uint64_t p = rng();
  uint64_t h = KvCacheManager::hash_block(p, "", t);
  EXPECT_EQ(h, KvCacheManager::hash_block(p, "", t));
  EXPECT_NE(h, KvCacheManager::hash_block(p ^ 1, "", t));
  EXPECT_NE(h, KvCacheManager::hash_block(p, "a", t));
  EXPECT_NE(KvCacheManager::hash_block(p, "ab", t), KvCacheManager::hash_block(p, "ba", t));
  auto swapped = t;
  std::swap(swapped[3], swapped[9]);
  EXPECT_TRUE(swapped == t || h != KvCacheManager::hash_block(p, "", swapped));
  // No collision among many random blocks that differ in one token or in the parent.
  std::unordered_set<uint64_t> seen;
  for (int i = 0; i < 100000; ++i) {
    auto u = t;
    u[static_cast<size_t>(i % 16)] = static_cast<int32_t>(rng());
    seen.insert(KvCacheManager::hash_block(i % 2 ? p : rng(), "", u));
  }
  EXPECT_GT(seen.size(), 99990u);  // equal random tokens may repeat a block; hash collisions would be far rarer
}

// Random share/allocate/release/register against a model of the reference counts.
TEST(KvCacheManager, RandomOperationsKeepTheStatesConsistent) {
  uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int n = 16, bs = 2;
  KvCacheManager kv(n, bs);
  std::map<int32_t, int> refs;  // model: block -> holders
  std::vector<std::pair<uint64_t, std::vector<int32_t>>> registered;
  for (int it = 0; it < 20000; ++it) {
    int op = static_cast<int>(rng() % 4);
    if (op == 0 && kv.num_available() > 0) {
      int32_t b = kv.allocate();
      EXPECT_EQ(refs[b]++, 0);
    } else if (op == 1 && !refs.empty()) {
      auto itb = std::next(refs.begin(), static_cast<long>(rng() % refs.size()));
      kv.release(itb->first);
      if (--itb->second == 0) refs.erase(itb);
    } else if (op == 2 && !refs.empty()) {
      int32_t b = std::next(refs.begin(), static_cast<long>(rng() % refs.size()))->first;
      if (!kv.is_registered(b)) {
        auto t = random_tokens(rng, bs);
        t[0] = static_cast<int32_t>(rng() % 3);  // small alphabet: duplicates happen
        t[1] = static_cast<int32_t>(rng() % 3);
        uint64_t h = KvCacheManager::hash_block(KvCacheManager::kRootHash, "", t);
        if (kv.register_block(b, h, KvCacheManager::kRootHash, "", t)) registered.push_back({h, t});
      }
    } else if (op == 3 && !registered.empty()) {
      auto& [h, t] = registered[rng() % registered.size()];
      int32_t b = kv.lookup(h, KvCacheManager::kRootHash, "", t);
      if (b >= 0) {
        kv.share(b);
        ++refs[b];
      }
    }
    int used = 0;
    for (auto& [b, r] : refs) {
      ASSERT_EQ(kv.ref_count(b), r);
      ++used;
    }
    ASSERT_EQ(kv.num_used(), used);
    ASSERT_EQ(kv.num_used() + kv.num_free() + kv.num_cached(), n);
    ASSERT_TRUE(kv.check_invariants().is_ok()) << kv.check_invariants().to_string();
  }
}

}  // namespace
}  // namespace nb::engine
