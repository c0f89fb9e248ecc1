// AdapterRegistry (CPU LRU cache, pinning, device slots) and BatchAdapterMap.
#include <gtest/gtest.h>

#include <map>

#include "lora/registry.h"
#include "lora_test_util.h"

namespace nb {
namespace {

using lora_test::AdapterWriter;
using lora_test::fake_base;

const std::string kQ0 = "model.layers.0.self_attn.q_proj";

// Small adapters on disk (so evicted ones can be reloaded), each with its own random values.
class RegistryTest : public ::testing::Test {
 protected:
  const std::string& dir(const std::string& name) {
    auto it = writers_.find(name);
    if (it == writers_.end()) {
      // Distinct lora_A values per adapter (seeded by creation order).
      auto w = std::make_unique<AdapterWriter>("reg_" + name);
      w->add_values(lora_test::key(kQ0, ".lora_A.weight"), {4, lora_test::kHidden},
                    lora_test::random_values(4 * lora_test::kHidden, 77u + static_cast<uint32_t>(writers_.size())));
      w->add(lora_test::key(kQ0, ".lora_B.weight"), {lora_test::kQ, 4});
      w->write(R"({"target_modules":["q_proj"],"r":4,"lora_alpha":8})");
      it = writers_.emplace(name, std::move(w)).first;
    }
    return it->second->dir();
  }
  const std::vector<float>& raw_a(const std::string& name) {
    return writers_.at(name)->get(lora_test::key(kQ0, ".lora_A.weight")).values;
  }
  void load(AdapterRegistry& reg, const std::string& name, bool pin = false) {
    Status s = reg.load(name, dir(name), pin);
    ASSERT_TRUE(s.is_ok()) << s.to_string();
  }
  void expect_values(const std::shared_ptr<const LoraAdapter>& a, const std::string& name) {
    ASSERT_TRUE(a);
    const HostTensor& t = a->modules.at(kQ0).a;
    const auto& raw = raw_a(name);
    ASSERT_EQ(static_cast<size_t>(t.numel()), raw.size());
    for (size_t i = 0; i < raw.size(); ++i) ASSERT_EQ(t.as<float>()[i], raw[i]) << name;
  }

  std::map<std::string, std::unique_ptr<AdapterWriter>> writers_;
};

TEST_F(RegistryTest, DuplicateNamesAndUnknownNames) {
  AdapterRegistry reg(fake_base());
  load(reg, "b");
  load(reg, "a");
  Status dup = reg.load("a", dir("c"));
  EXPECT_FALSE(dup.is_ok());
  EXPECT_NE(dup.message().find("adapter 'a' is already loaded"), std::string::npos) << dup.message();
  EXPECT_EQ(reg.list(), (std::vector<std::string>{"a", "b"}));

  Result<BatchAdapterMap> m = BatchAdapterMap::build(reg, {"a", "", "zz"});
  ASSERT_FALSE(m.is_ok());
  EXPECT_EQ(m.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(m.status().message(), "adapter 'zz' is not loaded; loaded: a, b");
  EXPECT_FALSE(reg.get("zz").is_ok());
  EXPECT_FALSE(reg.remove("zz").is_ok());

  // A failed load registers nothing.
  Status bad = reg.load("broken", "/nonexistent/adapter");
  EXPECT_FALSE(bad.is_ok());
  EXPECT_FALSE(reg.contains("broken"));
}

TEST_F(RegistryTest, BatchMapRowsAndDistinctAdapters) {
  AdapterRegistry reg(fake_base());
  load(reg, "a");
  load(reg, "b");
  Result<BatchAdapterMap> m = BatchAdapterMap::build(reg, {"b", "", "a", "b", ""});
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  EXPECT_EQ(m->row_index(), (std::vector<int>{0, -1, 1, 0, -1}));
  EXPECT_EQ(m->names(), (std::vector<std::string>{"b", "a"}));
  ASSERT_EQ(m->adapters().size(), 2u);
  expect_values(m->adapters()[0], "b");
  expect_values(m->adapters()[1], "a");
  EXPECT_EQ(m->row_slots(std::vector<int>{5, 7}), (std::vector<int>{5, -1, 7, 5, -1}));
  Result<BatchAdapterMap> base_only = BatchAdapterMap::build(reg, {"", ""});
  ASSERT_TRUE(base_only.is_ok());
  EXPECT_EQ(base_only->row_index(), (std::vector<int>{-1, -1}));
  EXPECT_TRUE(base_only->names().empty());
}

TEST_F(RegistryTest, CpuCacheEvictsLeastRecentlyUsedAndReloads) {
  AdapterRegistry reg(fake_base(), {.max_loras = 0, .max_cpu_loras = 2});
  load(reg, "a");
  load(reg, "b");
  load(reg, "c");  // evicts a (oldest)
  EXPECT_EQ(reg.resident(), (std::vector<std::string>{"c", "b"}));
  EXPECT_TRUE(reg.contains("a"));
  EXPECT_FALSE(reg.is_resident("a"));
  ASSERT_TRUE(reg.get("b").is_ok());  // b is now more recent than c
  load(reg, "d");                     // evicts c
  EXPECT_EQ(reg.resident(), (std::vector<std::string>{"d", "b"}));
  Result<std::shared_ptr<const LoraAdapter>> a = reg.get("a");  // reload from disk, evicts b
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  expect_values(*a, "a");
  EXPECT_EQ(reg.resident(), (std::vector<std::string>{"a", "d"}));
  EXPECT_EQ(reg.list(), (std::vector<std::string>{"a", "b", "c", "d"}));
}

TEST_F(RegistryTest, EvictionNeverFreesAdapterInUse) {
  AdapterRegistry reg(fake_base(), {.max_loras = 0, .max_cpu_loras = 1});
  load(reg, "a");
  std::shared_ptr<const LoraAdapter> held = reg.get("a").value();
  load(reg, "b");  // evicts a from the cache
  EXPECT_FALSE(reg.is_resident("a"));
  expect_values(held, "a");  // the batch's reference stays valid
}

TEST_F(RegistryTest, PinnedAdaptersAreNeverEvicted) {
  AdapterRegistry reg(fake_base(), {.max_loras = 0, .max_cpu_loras = 2});
  load(reg, "a", /*pin=*/true);
  load(reg, "b");
  load(reg, "c");  // a is oldest but pinned: b goes
  EXPECT_TRUE(reg.is_resident("a"));
  EXPECT_FALSE(reg.is_resident("b"));
  ASSERT_TRUE(reg.pin("c").is_ok());
  Status full = reg.load("d", dir("d"));
  EXPECT_FALSE(full.is_ok());
  EXPECT_NE(full.message().find("max_cpu_loras=2"), std::string::npos) << full.message();
  EXPECT_FALSE(reg.contains("d"));
  EXPECT_FALSE(reg.get("b").is_ok());  // cannot be reloaded either
  ASSERT_TRUE(reg.unpin("a").is_ok());
  load(reg, "d");  // now a can go
  EXPECT_FALSE(reg.is_resident("a"));
  EXPECT_TRUE(reg.is_resident("c"));
}

TEST_F(RegistryTest, SlotsLruAmongIdleUnpinned) {
  AdapterRegistry reg(fake_base(), {.max_loras = 2, .max_cpu_loras = 0});
  for (const char* n : {"a", "b", "c"}) load(reg, n);
  auto acquire = [&](std::vector<std::string> names) { return reg.acquire_slots(names); };

  Result<std::vector<SlotGrant>> g = acquire({"a"});
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_EQ((*g)[0].slot, 0);
  EXPECT_TRUE((*g)[0].needs_upload);
  expect_values((*g)[0].adapter, "a");
  g = acquire({"a"});  // already resident in its slot
  EXPECT_EQ((*g)[0].slot, 0);
  EXPECT_FALSE((*g)[0].needs_upload);
  g = acquire({"b"});
  EXPECT_EQ((*g)[0].slot, 1);

  Result<std::vector<SlotGrant>> busy = acquire({"c"});  // a and b are held by batches
  ASSERT_FALSE(busy.is_ok());
  EXPECT_NE(busy.status().message().find("only 0 of 2"), std::string::npos) << busy.status().message();

  reg.release_slots({"a"});
  reg.release_slots({"a"});  // a idle now (two acquires)
  g = acquire({"c"});        // takes a's slot
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_EQ((*g)[0].slot, 0);
  EXPECT_TRUE((*g)[0].needs_upload);
  EXPECT_EQ(reg.slot_of("a"), -1);
  EXPECT_EQ(reg.slot_of("c"), 0);

  // Both idle; b's slot is older, but b is pinned: c's slot is reused for a.
  reg.release_slots({"b"});
  reg.release_slots({"c"});
  ASSERT_TRUE(reg.pin("b").is_ok());
  g = acquire({"a"});
  ASSERT_TRUE(g.is_ok());
  EXPECT_EQ((*g)[0].slot, 0);
  EXPECT_EQ(reg.slot_of("b"), 1);
  EXPECT_EQ(reg.slot_of("c"), -1);

  // Removing an adapter a batch holds is refused; once released it frees its slot.
  Status rm = reg.remove("a");
  EXPECT_FALSE(rm.is_ok());
  EXPECT_NE(rm.message().find("in use"), std::string::npos) << rm.message();
  reg.release_slots({"a"});
  ASSERT_TRUE(reg.remove("a").is_ok());
  EXPECT_FALSE(reg.contains("a"));
  g = acquire({"c"});
  ASSERT_TRUE(g.is_ok());
  EXPECT_EQ((*g)[0].slot, 0);
}

TEST_F(RegistryTest, SlotAcquisitionIsAllOrNothing) {
  AdapterRegistry reg(fake_base(), {.max_loras = 2, .max_cpu_loras = 0});
  for (const char* n : {"a", "b", "c"}) load(reg, n);
  EXPECT_FALSE(reg.acquire_slots({"a", "b", "c"}).is_ok());  // more adapters than slots
  ASSERT_TRUE(reg.acquire_slots({"a"}).is_ok());            // a held
  Result<std::vector<SlotGrant>> g = reg.acquire_slots({"b", "c"});
  EXPECT_FALSE(g.is_ok());
  EXPECT_EQ(reg.slot_of("b"), -1);  // nothing was taken by the failed call
  EXPECT_EQ(reg.slot_of("c"), -1);
  EXPECT_FALSE(reg.acquire_slots({"b", "zz"}).is_ok());
  EXPECT_EQ(reg.slot_of("b"), -1);

  // The grants line up with the batch map's adapters.
  reg.release_slots({"a"});
  Result<BatchAdapterMap> m = BatchAdapterMap::build(reg, {"c", "", "b", "c"});
  ASSERT_TRUE(m.is_ok());
  g = reg.acquire_slots(m->names());
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  std::vector<int> rows = m->row_slots(*g);
  EXPECT_EQ(rows[1], -1);
  EXPECT_EQ(rows[0], reg.slot_of("c"));
  EXPECT_EQ(rows[2], reg.slot_of("b"));
  EXPECT_EQ(rows[3], rows[0]);
  EXPECT_NE(rows[0], rows[2]);
}

TEST(RegistryOptions, Validate) {
  EXPECT_TRUE((AdapterRegistryOptions{.max_loras = 4, .max_cpu_loras = 0}).validate().is_ok());
  EXPECT_TRUE((AdapterRegistryOptions{.max_loras = 4, .max_cpu_loras = 4}).validate().is_ok());
  Status s = AdapterRegistryOptions{.max_loras = 4, .max_cpu_loras = 2}.validate();
  EXPECT_NE(s.message().find("max_cpu_loras=2 must be at least max_loras=4"), std::string::npos) << s.message();
  EXPECT_FALSE((AdapterRegistryOptions{.max_loras = -1}).validate().is_ok());
  EXPECT_FALSE((AdapterRegistryOptions{.dtype = DType::kI8}).validate().is_ok());
}

TEST_F(RegistryTest, CpuEvictionSparesBatchesAndPrefersSlotlessAdapters) {
  AdapterRegistry reg(fake_base(), {.max_loras = 1, .max_cpu_loras = 2});
  load(reg, "a");
  ASSERT_TRUE(reg.acquire_slots({"a"}).is_ok());  // a held by a batch
  load(reg, "b");
  Status s = reg.load("c", dir("c"));  // a is in use, so b goes
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  EXPECT_FALSE(reg.is_resident("b"));
  EXPECT_TRUE(reg.is_resident("a"));
  ASSERT_TRUE(reg.pin("c").is_ok());
  EXPECT_FALSE(reg.load("d", dir("d")).is_ok());  // a in use, c pinned
  reg.release_slots({"a"});
  // a now idles in its slot and is the only evictable adapter: it goes, freeing the slot.
  load(reg, "d");
  EXPECT_FALSE(reg.is_resident("a"));
  EXPECT_EQ(reg.slot_of("a"), -1);
  ASSERT_TRUE(reg.unpin("c").is_ok());

  // Among evictable adapters, one idling in a slot is kept over an older-used slotless one.
  Result<std::vector<SlotGrant>> g = reg.acquire_slots({"c"});
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  reg.release_slots({"c"});
  ASSERT_TRUE(reg.get("d").is_ok());  // d more recent than c
  ASSERT_TRUE(reg.get("a").is_ok());  // reload a: evicts slotless d, not c
  EXPECT_TRUE(reg.is_resident("c"));
  EXPECT_FALSE(reg.is_resident("d"));
  EXPECT_EQ(reg.slot_of("c"), 0);
}

}  // namespace
}  // namespace nb

namespace nb {
namespace {

// An evicted adapter comes back in two halves: read() (disk, no state change) and restore().
TEST_F(RegistryTest, ReadThenRestoreBringsAnEvictedAdapterBack) {
  AdapterRegistryOptions o;
  o.max_cpu_loras = 1;
  AdapterRegistry reg(fake_base(), o);
  load(reg, "a");
  load(reg, "b");  // evicts a
  ASSERT_FALSE(reg.is_resident("a"));
  Result<LoraAdapter> read = reg.read("a");
  ASSERT_TRUE(read.is_ok()) << read.status().to_string();
  EXPECT_FALSE(reg.is_resident("a")) << "read() changes nothing";
  EXPECT_TRUE(reg.is_resident("b"));
  ASSERT_TRUE(reg.restore("a", std::move(read).value()).is_ok());
  EXPECT_TRUE(reg.is_resident("a"));
  EXPECT_FALSE(reg.is_resident("b")) << "the cache holds one";
  auto a = reg.get("a");
  ASSERT_TRUE(a.is_ok());
  expect_values(*a, "a");
  for (const AdapterRegistry::State& s : reg.states()) {
    if (s.name == "a") {
      EXPECT_EQ(s.loads, 2);
      EXPECT_EQ(s.evictions, 1);
    }
    if (s.name == "b") {
      EXPECT_EQ(s.evictions, 1);
    }
  }
  // Restoring what is resident is a no-op; unknown names are named.
  Result<LoraAdapter> again = reg.read("a");
  ASSERT_TRUE(again.is_ok());
  EXPECT_TRUE(reg.restore("a", std::move(again).value()).is_ok());
  EXPECT_FALSE(reg.read("zz").is_ok());
  // A pinned adapter cannot be evicted to make room.
  ASSERT_TRUE(reg.pin("a").is_ok());
  Result<LoraAdapter> b = reg.read("b");
  ASSERT_TRUE(b.is_ok());
  Status full = reg.restore("b", std::move(b).value());
  ASSERT_FALSE(full.is_ok());
  EXPECT_NE(full.message().find("max_cpu_loras=1"), std::string::npos) << full.to_string();
}

}  // namespace
}  // namespace nb
