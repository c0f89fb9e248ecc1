#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <random>
#include <set>

namespace nb::engine {
namespace {

uint64_t fresh_seed() {
  if (const char* s = std::getenv("NIBBLE_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) | rd();
}

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int64_t n, int vocab = 1000) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return t;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::set<std::string> step_adapters(const ScheduledStep& st) {
  std::set<std::string> a;
  for (const auto& r : st.seqs) {
    if (!r.adapter.empty()) a.insert(r.adapter);
  }
  return a;
}

const ScheduledSeq* row_of(const ScheduledStep& st, SeqId id) {
  for (const auto& r : st.seqs) {
    if (r.id == id) return &r;
  }
  return nullptr;
}

// The scheduler plus a model of what it promised: each sequence's tokens, computed count, block
// table and admission order, and a simulated KV cache whose slots hold a fingerprint of (adapter,
// every token up to that position). A row may read only slots holding its own fingerprints and may
// write only blocks that no other live sequence holds, so a wrong prefix hit, a block in two roles,
// or a freed block read as if still valid shows up as a mismatch. Every step is checked against
// the rules of scheduler.h; the scheduler's own check_invariants() runs too.
class Sim {
 public:
  struct Seq {
    std::vector<int32_t> tokens;
    size_t prompt_len = 0;
    std::string adapter;
    int max_new = 0;
    int64_t computed = 0;
    bool running = false;
    int64_t admitted = 0;  // admission order while running
    bool ever_admitted = false;
    bool preempted = false;  // waiting to be admitted again
    std::vector<int32_t> table;
  };

  Sim(SchedulerConfig c, uint64_t seed)
      : cfg(c), sched(c), rng(seed), kv(static_cast<size_t>(c.num_blocks) * c.block_size, 0) {}

  Status add(SeqId id, std::vector<int32_t> prompt, std::string adapter, int max_new) {
    Status s = sched.add(id, prompt, adapter, max_new);
    if (s.is_ok()) {
      Seq m;
      m.prompt_len = prompt.size();
      m.tokens = std::move(prompt);
      m.adapter = std::move(adapter);
      m.max_new = max_new;
      live.emplace(id, std::move(m));
    }
    return s;
  }

  // schedule() + checks + complete() with random tokens.
  void step() {
    bool idle_before = sched.idle();
    last = sched.schedule();
    ++steps;
    ASSERT_TRUE(idle_before || !last.empty()) << "work waiting but nothing scheduled";
    ASSERT_NO_FATAL_FAILURE(check_step(last));
    Status inv = sched.check_invariants();
    ASSERT_TRUE(inv.is_ok()) << "in flight: " << inv.to_string();
    std::vector<int32_t> sampled(last.seqs.size());
    for (auto& t : sampled) t = static_cast<int32_t>(rng() % 1000);
    last_finished = sched.complete(last, sampled);
    ASSERT_NO_FATAL_FAILURE(apply(last, sampled, last_finished));
    ASSERT_NO_FATAL_FAILURE(check_state());
    if (admitted_now && last.preempted.empty()) {
      ASSERT_NO_FATAL_FAILURE(check_watermark());
    }
  }

  void finish(SeqId id) {
    sched.finish(id);
    live.erase(id);
    ASSERT_FALSE(sched.has(id));
    ASSERT_NO_FATAL_FAILURE(check_state());
  }

  void drain(int max_steps) {
    for (int i = 0; i < max_steps && !sched.idle(); ++i) ASSERT_NO_FATAL_FAILURE(step());
    ASSERT_TRUE(sched.idle()) << "not drained after " << max_steps << " steps";
    ASSERT_TRUE(live.empty());
    SchedulerStats s = sched.stats();
    EXPECT_EQ(s.blocks_used, 0);
    EXPECT_EQ(s.running, 0);
    EXPECT_EQ(s.waiting, 0);
    EXPECT_LE(s.blocks_cached, s.blocks_total);
  }

  std::vector<int32_t> generated(SeqId id) const {
    const Seq& m = live.at(id);
    return {m.tokens.begin() + static_cast<long>(m.prompt_len), m.tokens.end()};
  }

  SchedulerConfig cfg;
  Scheduler sched;
  std::mt19937_64 rng;
  std::vector<uint64_t> kv;  // slot -> fingerprint written there (0 = never written)
  std::map<SeqId, Seq> live;
  std::map<SeqId, std::vector<int32_t>> done;  // finished by complete(): all tokens
  ScheduledStep last;
  std::vector<SeqId> last_finished;
  int64_t steps = 0, admissions = 0;
  bool admitted_now = false, fresh_admitted_now = false;  // in the last step
  size_t max_step_adapters = 0;

 private:
  int64_t bs() const { return cfg.block_size; }

  // fp[p] identifies (adapter, tokens[0..p]).
  std::vector<uint64_t> fingerprints(const Seq& m, int64_t upto) const {
    std::vector<uint64_t> fp(static_cast<size_t>(upto));
    uint64_t h = 0x51ed270b27a1c3d5ULL ^ std::hash<std::string>{}(m.adapter);
    for (int64_t p = 0; p < upto; ++p) {
      h = (h ^ static_cast<uint32_t>(m.tokens[p])) * 0x100000001b3ULL + 0x9e37;
      h ^= h >> 29;
      fp[p] = h | 1;  // never 0
    }
    return fp;
  }

  void check_preempted(const ScheduledStep& st) {
    int64_t newest_kept = -1;
    for (auto& [id, m] : live) {
      if (m.running && std::count(st.preempted.begin(), st.preempted.end(), id) == 0)
        newest_kept = std::max(newest_kept, m.admitted);
    }
    for (SeqId id : st.preempted) {
      ASSERT_TRUE(live.count(id));
      Seq& m = live[id];
      ASSERT_TRUE(m.running) << "preempted " << id << " was not running";
      EXPECT_GT(m.admitted, newest_kept) << "preempted " << id << " is not among the most recently admitted";
      m.running = false;
      m.preempted = true;
      m.computed = 0;
      m.table.clear();
    }
  }

  void check_row(const ScheduledSeq& r) {
    ASSERT_TRUE(live.count(r.id)) << "row for unknown " << r.id;
    Seq& m = live[r.id];
    int64_t len = static_cast<int64_t>(r.tokens.size()), end = r.start + len;
    ASSERT_GE(len, 1);
    ASSERT_EQ(r.adapter, m.adapter);
    ASSERT_LE(end, static_cast<int64_t>(m.tokens.size()));
    ASSERT_TRUE(std::equal(r.tokens.begin(), r.tokens.end(), m.tokens.begin() + r.start)) << "wrong tokens fed";
    ASSERT_EQ(r.sample, end == static_cast<int64_t>(m.tokens.size()));
    ASSERT_EQ(static_cast<int64_t>(r.block_table.size()), ceil_div(end, bs()));
    ASSERT_EQ(std::set<int32_t>(r.block_table.begin(), r.block_table.end()).size(), r.block_table.size());
    for (int32_t b : r.block_table) ASSERT_TRUE(b >= 0 && b < cfg.num_blocks);
    if (m.running) {
      ASSERT_EQ(r.start, m.computed);
      ASSERT_TRUE(std::equal(m.table.begin(), m.table.end(), r.block_table.begin())) << "table changed under a seq";
    } else {  // (re)admitted: it starts after whole cached blocks and computes at least its last token
      ASSERT_EQ(r.start % bs(), 0);
      ASSERT_LT(r.start, static_cast<int64_t>(m.tokens.size()));
      ASSERT_TRUE(cfg.prefix_caching || r.start == 0) << "a hit without prefix caching";
      m.running = true;
      m.admitted = ++admissions;
      admitted_now = true;
      fresh_admitted_now |= !m.ever_admitted;
      m.ever_admitted = true;
      m.preempted = false;
    }
    m.table = r.block_table;
  }

  void check_step(const ScheduledStep& st) {
    ASSERT_LE(st.num_tokens(), cfg.max_num_batched_tokens);
    ASSERT_LE(static_cast<int>(st.seqs.size()), cfg.max_num_seqs);
    std::set<std::string> adapters = step_adapters(st);
    ASSERT_LE(static_cast<int>(adapters.size()), cfg.max_loras);
    max_step_adapters = std::max(max_step_adapters, adapters.size());
    ASSERT_NO_FATAL_FAILURE(check_preempted(st));
    std::set<SeqId> in_step;
    for (const auto& r : st.seqs) {
      ASSERT_TRUE(in_step.insert(r.id).second) << "two rows for " << r.id;
      ASSERT_EQ(std::count(st.preempted.begin(), st.preempted.end(), r.id), 0);
    }
    // Every running sequence whose prompt is computed gets its decode row.
    for (auto& [id, m] : live) {
      bool decoding = m.running && m.computed + 1 == static_cast<int64_t>(m.tokens.size());
      ASSERT_TRUE(!decoding || in_step.count(id)) << "decode row of " << id << " missing";
    }
    admitted_now = fresh_admitted_now = false;
    for (const auto& r : st.seqs) ASSERT_NO_FATAL_FAILURE(check_row(r));
    ASSERT_NO_FATAL_FAILURE(check_kv(st));
    if (fresh_admitted_now) {
      ASSERT_NO_FATAL_FAILURE(check_resumed_first());
    }
  }

  // Preempted sequences wait at the front: a new arrival is admitted only after every preempted
  // one whose adapter the step could take.
  void check_resumed_first() {
    std::set<std::string> adapters;
    for (auto& [id, m] : live) {
      if (m.running && !m.adapter.empty()) adapters.insert(m.adapter);
    }
    for (auto& [id, m] : live) {
      bool fits = m.adapter.empty() || adapters.count(m.adapter) ||
                  static_cast<int>(adapters.size()) < cfg.max_loras;
      ASSERT_FALSE(m.preempted && fits) << "preempted " << id << " passed over by a new arrival";
    }
  }

  // The watermark (scheduler.cpp): after admitting, one available block remains for every running
  // sequence whose next token starts a new block.
  void check_watermark() {
    int needs = 0;
    for (auto& [id, m] : live) needs += m.running && m.computed % bs() == 0 ? 1 : 0;
    SchedulerStats s = sched.stats();
    ASSERT_GE(s.blocks_total - s.blocks_used, needs) << "admission ate the running sequences' next blocks";
  }

  // Reads, then writes, of the simulated KV cache.
  void check_kv(const ScheduledStep& st) {
    std::map<int32_t, std::set<SeqId>> holders;
    for (auto& [id, m] : live) {
      for (int32_t b : m.table) holders[b].insert(id);
    }
    for (const auto& r : st.seqs) {
      int64_t end = r.start + static_cast<int64_t>(r.tokens.size());
      for (int64_t i = r.start / bs(); i < ceil_div(end, bs()); ++i) {
        ASSERT_EQ(holders[r.block_table[i]], std::set<SeqId>{r.id}) << "writes into block " << r.block_table[i]
                                                                       << " held by others";
      }
      std::vector<uint64_t> fp = fingerprints(live[r.id], end);
      for (int64_t p = 0; p < r.start; ++p)
        ASSERT_EQ(kv[r.block_table[p / bs()] * bs() + p % bs()], fp[p]) << "seq " << r.id << " reads wrong KV at " << p;
    }
    for (const auto& r : st.seqs) {
      int64_t end = r.start + static_cast<int64_t>(r.tokens.size());
      std::vector<uint64_t> fp = fingerprints(live[r.id], end);
      for (int64_t p = r.start; p < end; ++p) kv[r.block_table[p / bs()] * bs() + p % bs()] = fp[p];
    }
  }

  void apply(const ScheduledStep& st, const std::vector<int32_t>& sampled, const std::vector<SeqId>& finished) {
    std::set<SeqId> expect_finished;
    for (size_t i = 0; i < st.seqs.size(); ++i) {
      const ScheduledSeq& r = st.seqs[i];
      Seq& m = live[r.id];
      m.computed = r.start + static_cast<int64_t>(r.tokens.size());
      if (!r.sample) continue;
      m.tokens.push_back(sampled[i]);
      int64_t gen = static_cast<int64_t>(m.tokens.size() - m.prompt_len);
      ASSERT_LE(gen, m.max_new);
      if (gen == m.max_new || static_cast<int64_t>(m.tokens.size()) >= cfg.max_model_len) expect_finished.insert(r.id);
    }
    ASSERT_EQ(std::set<SeqId>(finished.begin(), finished.end()), expect_finished);
    for (SeqId id : finished) {
      ASSERT_FALSE(sched.has(id));
      done[id] = live[id].tokens;
      live.erase(id);
    }
  }

  void check_state() {
    SchedulerStats s = sched.stats();
    int running = 0;
    std::set<int32_t> used;
    for (auto& [id, m] : live) {
      ASSERT_TRUE(sched.has(id));
      ASSERT_EQ(sched.generated(id), generated(id));
      if (!m.running) continue;
      ++running;
      used.insert(m.table.begin(), m.table.end());
    }
    ASSERT_EQ(s.running, running);
    ASSERT_EQ(s.waiting, static_cast<int>(live.size()) - running);
    ASSERT_EQ(s.blocks_total, cfg.num_blocks);
    ASSERT_EQ(s.blocks_used, static_cast<int>(used.size())) << "a block is leaked or counted twice";
    ASSERT_LE(s.blocks_used + s.blocks_cached, s.blocks_total);
    ASSERT_LE(s.prefix_hits, s.prefix_queries);
    Status inv = sched.check_invariants();
    ASSERT_TRUE(inv.is_ok()) << inv.to_string();
  }
};

#define SEEDED()                  \
  uint64_t seed = fresh_seed();   \
  SCOPED_TRACE("NIBBLE_TEST_SEED=" + std::to_string(seed))

SchedulerConfig small_config(int num_blocks, int block_size) {
  SchedulerConfig c;
  c.num_blocks = num_blocks;
  c.block_size = block_size;
  c.max_num_seqs = 16;
  c.max_num_batched_tokens = 256;
  c.max_model_len = 1024;
  c.max_loras = 4;
  return c;
}

TEST(Scheduler, SinglePrefillThenDecodeWithPositionsAndBlockTables) {
  SEEDED();
  Sim sim(small_config(16, 4), seed);
  auto prompt = random_tokens(sim.rng, 10);
  const int max_new = 7;
  ASSERT_TRUE(sim.add(1, prompt, "", max_new).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.step());
  ASSERT_EQ(sim.last.seqs.size(), 1u);
  const ScheduledSeq pre = sim.last.seqs[0];  // a copy: sim.last changes every step
  EXPECT_EQ(pre.start, 0);
  EXPECT_EQ(pre.tokens, prompt);
  EXPECT_TRUE(pre.sample);
  EXPECT_EQ(pre.block_table.size(), 3u);
  for (int k = 1; k < max_new; ++k) {
    ASSERT_TRUE(sim.sched.has(1));
    std::vector<int32_t> gen = sim.sched.generated(1);
    ASSERT_EQ(static_cast<int>(gen.size()), k);
    ASSERT_NO_FATAL_FAILURE(sim.step());
    ASSERT_EQ(sim.last.seqs.size(), 1u);
    const ScheduledSeq& r = sim.last.seqs[0];
    // A decode row feeds the last generated token at position prompt + generated - 1.
    EXPECT_EQ(r.tokens, std::vector<int32_t>{gen.back()});
    EXPECT_EQ(r.start, static_cast<int64_t>(prompt.size() + gen.size()) - 1);
    EXPECT_TRUE(r.sample);
    EXPECT_EQ(static_cast<int64_t>(r.block_table.size()), ceil_div(r.start + 1, 4));
    EXPECT_TRUE(std::equal(pre.block_table.begin(), pre.block_table.end(), r.block_table.begin()));
    EXPECT_EQ(sim.last_finished.empty(), k + 1 < max_new);
  }
  EXPECT_FALSE(sim.sched.has(1));
  ASSERT_EQ(sim.done[1].size(), prompt.size() + max_new);
  SchedulerStats s = sim.sched.stats();
  EXPECT_EQ(s.blocks_used, 0);
  // Every block full of computed tokens (the last sampled token is never fed) stays cached.
  EXPECT_EQ(s.blocks_cached, static_cast<int>((prompt.size() + max_new - 1) / 4));
  EXPECT_TRUE(sim.sched.idle());
  EXPECT_TRUE(sim.sched.schedule().empty());
}

TEST(Scheduler, ChunkedPrefillUnderASmallTokenBudget) {
  SEEDED();
  SchedulerConfig c = small_config(32, 4);
  c.max_num_batched_tokens = 8;
  c.max_num_seqs = 8;
  Sim sim(c, seed);
  ASSERT_TRUE(sim.add(1, random_tokens(sim.rng, 30), "", 2).is_ok());
  int64_t expect_start = 0;
  while (true) {
    ASSERT_NO_FATAL_FAILURE(sim.step());
    const ScheduledSeq& r = sim.last.seqs.at(0);
    int64_t len = std::min<int64_t>(8, 30 - expect_start);
    EXPECT_EQ(r.start, expect_start);
    EXPECT_EQ(static_cast<int64_t>(r.tokens.size()), len);
    EXPECT_EQ(r.sample, expect_start + len == 30);  // only the last chunk yields a token
    expect_start += len;
    if (r.sample) break;
  }
  EXPECT_EQ(sim.steps, 4);
  // A second prompt is chunked into what the decode row leaves of the budget.
  ASSERT_TRUE(sim.add(2, random_tokens(sim.rng, 20), "", 3).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.step());  // 1's last decode + 2's first chunk
  const ScheduledSeq* r2 = row_of(sim.last, 2);
  ASSERT_NE(r2, nullptr);
  EXPECT_EQ(r2->tokens.size(), 7u);
  EXPECT_FALSE(r2->sample);
  ASSERT_NO_FATAL_FAILURE(sim.drain(100));
}

TEST(Scheduler, ManySequencesBeyondMaxNumSeqs) {
  SEEDED();
  SchedulerConfig c = small_config(128, 4);
  c.max_num_seqs = 4;
  Sim sim(c, seed);
  for (SeqId id = 0; id < 11; ++id) {
    ASSERT_TRUE(sim.add(id, random_tokens(sim.rng, 3 + static_cast<int64_t>(sim.rng() % 20)), "",
                        1 + static_cast<int>(sim.rng() % 8))
                    .is_ok());
  }
  std::vector<SeqId> first_seen;
  for (int i = 0; i < 200 && !sim.sched.idle(); ++i) {
    ASSERT_NO_FATAL_FAILURE(sim.step());
    EXPECT_LE(sim.sched.stats().running, 4);
    for (const auto& r : sim.last.seqs) {
      if (std::find(first_seen.begin(), first_seen.end(), r.id) == first_seen.end()) first_seen.push_back(r.id);
    }
  }
  ASSERT_TRUE(sim.sched.idle());
  EXPECT_EQ(sim.done.size(), 11u);
  // One adapter: first come, first served.
  EXPECT_TRUE(std::is_sorted(first_seen.begin(), first_seen.end()));
}

TEST(Scheduler, PrefixSharingSameAdapterOnly) {
  SEEDED();
  Sim sim(small_config(32, 4), seed);
  auto prompt = random_tokens(sim.rng, 14);  // 3 full blocks + 2 tokens
  ASSERT_TRUE(sim.add(1, prompt, "", 20).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.step());
  std::vector<int32_t> table1 = sim.last.seqs.at(0).block_table;
  EXPECT_EQ(sim.sched.stats().prefix_hits, 0);

  ASSERT_TRUE(sim.add(2, prompt, "", 20).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.step());
  const ScheduledSeq* r2 = row_of(sim.last, 2);
  ASSERT_NE(r2, nullptr);
  EXPECT_EQ(r2->start, 12);  // computes only the tail
  EXPECT_EQ(r2->tokens.size(), 2u);
  EXPECT_TRUE(std::equal(table1.begin(), table1.begin() + 3, r2->block_table.begin()));
  SchedulerStats s = sim.sched.stats();
  EXPECT_EQ(s.prefix_queries, 24);  // 3 blocks looked up by each
  EXPECT_EQ(s.prefix_hits, 12);
  std::set<int32_t> distinct(table1.begin(), table1.end());
  distinct.insert(r2->block_table.begin(), r2->block_table.end());
  EXPECT_EQ(s.blocks_used, static_cast<int>(distinct.size()));  // shared blocks counted once

  ASSERT_TRUE(sim.add(3, prompt, "kjv", 20).is_ok());  // another adapter: its own KV
  ASSERT_NO_FATAL_FAILURE(sim.step());
  const ScheduledSeq* r3 = row_of(sim.last, 3);
  ASSERT_NE(r3, nullptr);
  EXPECT_EQ(r3->start, 0);
  for (int32_t b : r3->block_table) EXPECT_EQ(distinct.count(b), 0u);
  EXPECT_EQ(sim.sched.stats().prefix_hits, 12);

  // Once both base sequences are gone, their blocks stay cached and a third identical prompt hits.
  ASSERT_NO_FATAL_FAILURE(sim.finish(1));
  ASSERT_NO_FATAL_FAILURE(sim.finish(2));
  EXPECT_GE(sim.sched.stats().blocks_cached, 3);
  ASSERT_TRUE(sim.add(4, prompt, "", 5).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.step());
  const ScheduledSeq* r4 = row_of(sim.last, 4);
  ASSERT_NE(r4, nullptr);
  EXPECT_EQ(r4->start, 12);
  EXPECT_TRUE(std::equal(table1.begin(), table1.begin() + 3, r4->block_table.begin()));
  EXPECT_EQ(sim.sched.stats().prefix_hits, 24);
  ASSERT_NO_FATAL_FAILURE(sim.drain(100));
}

TEST(Scheduler, WholePromptCachedStillComputesItsLastBlock) {
  SEEDED();
  Sim sim(small_config(32, 4), seed);
  for (int blocks : {1, 3}) {
    SCOPED_TRACE(blocks);
    auto prompt = random_tokens(sim.rng, 4 * blocks);
    SeqId a = 10 * blocks, b = a + 1;
    ASSERT_TRUE(sim.add(a, prompt, "", 1).is_ok());
    ASSERT_NO_FATAL_FAILURE(sim.step());
    ASSERT_EQ(sim.last_finished, std::vector<SeqId>{a});
    std::vector<int32_t> table_a = sim.last.seqs.at(0).block_table;
    ASSERT_TRUE(sim.add(b, prompt, "", 2).is_ok());
    ASSERT_NO_FATAL_FAILURE(sim.step());
    const ScheduledSeq& r = sim.last.seqs.at(0);
    // All prompt blocks are cached, but the last one is recomputed so that the step yields logits.
    EXPECT_EQ(r.start, 4 * (blocks - 1));
    EXPECT_EQ(r.tokens.size(), 4u);
    EXPECT_TRUE(r.sample);
    EXPECT_TRUE(std::equal(table_a.begin(), table_a.end() - 1, r.block_table.begin()));
    ASSERT_NO_FATAL_FAILURE(sim.drain(10));
  }
}

TEST(Scheduler, GeneratedBlocksAreCachedForTheNextTurn) {
  SEEDED();
  Sim sim(small_config(32, 4), seed);
  auto prompt = random_tokens(sim.rng, 6);
  const int max_new = 10;
  ASSERT_TRUE(sim.add(1, prompt, "a", max_new).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.drain(50));
  // The next turn repeats the whole conversation and adds a user message.
  auto turn2 = concat(sim.done[1], random_tokens(sim.rng, 5));
  ASSERT_TRUE(sim.add(2, turn2, "a", 3).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.step());
  int64_t computed_by_1 = static_cast<int64_t>(prompt.size()) + max_new - 1;  // the last token was never fed
  EXPECT_EQ(sim.last.seqs.at(0).start, computed_by_1 / 4 * 4);
  ASSERT_NO_FATAL_FAILURE(sim.drain(50));
}

TEST(Scheduler, PreemptionWhenBlocksRunOutLosesNothing) {
  SEEDED();
  SchedulerConfig c = small_config(10, 4);  // 40 token slots
  c.max_num_seqs = 8;
  for (bool prefix : {true, false}) {
    SCOPED_TRACE(prefix);
    c.prefix_caching = prefix;
    Sim sim(c, seed + prefix);
    std::map<SeqId, int64_t> total;
    for (SeqId id = 0; id < 6; ++id) {
      // Short prompts, so that at least 3 are admitted at once; each grows to >= 5 of the 10 blocks.
      int64_t len = 2 + static_cast<int64_t>(sim.rng() % 4);
      int max_new = 16 + static_cast<int>(sim.rng() % (40 - 16 - len + 1));  // prompt + max_new <= 40
      total[id] = len + max_new;
      ASSERT_TRUE(sim.add(id, random_tokens(sim.rng, len), "", max_new).is_ok());
    }
    std::set<SeqId> preempted, resumed;
    for (int i = 0; i < 2000 && !sim.sched.idle(); ++i) {
      ASSERT_NO_FATAL_FAILURE(sim.step());
      for (const auto& r : sim.last.seqs) {
        if (preempted.count(r.id) && r.sample) resumed.insert(r.id);
      }
      preempted.insert(sim.last.preempted.begin(), sim.last.preempted.end());
    }
    ASSERT_TRUE(sim.sched.idle());
    SchedulerStats s = sim.sched.stats();
    EXPECT_GT(s.preemptions, 0);
    EXPECT_FALSE(preempted.empty());
    EXPECT_EQ(resumed, preempted);  // every preempted sequence came back and sampled again
    ASSERT_EQ(sim.done.size(), 6u);
    for (auto& [id, tokens] : sim.done) EXPECT_EQ(static_cast<int64_t>(tokens.size()), total[id]);
    EXPECT_EQ(s.blocks_used, 0);
    ASSERT_TRUE(sim.sched.check_invariants().is_ok());
  }
}

TEST(Scheduler, FinishFreesBlocksInEveryState) {
  SEEDED();
  SchedulerConfig c = small_config(6, 2);  // 12 slots
  c.max_num_batched_tokens = 4;
  Sim sim(c, seed);
  // Waiting.
  ASSERT_TRUE(sim.add(1, random_tokens(sim.rng, 5), "", 3).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.finish(1));
  EXPECT_TRUE(sim.sched.idle());
  sim.sched.finish(12345);  // unknown: ignored
  // Partly prefilled.
  ASSERT_TRUE(sim.add(2, random_tokens(sim.rng, 9), "", 3).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.step());
  ASSERT_FALSE(sim.last.seqs.at(0).sample);
  EXPECT_GT(sim.sched.stats().blocks_used, 0);
  ASSERT_NO_FATAL_FAILURE(sim.finish(2));
  EXPECT_EQ(sim.sched.stats().blocks_used, 0);
  // Decoding.
  ASSERT_TRUE(sim.add(3, random_tokens(sim.rng, 3), "", 5).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.step());
  ASSERT_NO_FATAL_FAILURE(sim.step());
  ASSERT_EQ(sim.last.seqs.at(0).tokens.size(), 1u);
  ASSERT_NO_FATAL_FAILURE(sim.finish(3));
  EXPECT_EQ(sim.sched.stats().blocks_used, 0);
  // Preempted: three sequences that each want 10 of the 12 slots.
  for (SeqId id = 4; id < 7; ++id) ASSERT_TRUE(sim.add(id, random_tokens(sim.rng, 2), "", 8).is_ok());
  std::vector<SeqId> victims;
  for (int i = 0; i < 100 && victims.empty(); ++i) {
    ASSERT_NO_FATAL_FAILURE(sim.step());
    victims = sim.last.preempted;
  }
  ASSERT_FALSE(victims.empty());
  int waiting = sim.sched.stats().waiting;
  for (SeqId v : victims) {
    if (sim.sched.has(v)) {
      ASSERT_NO_FATAL_FAILURE(sim.finish(v));
    }
  }
  EXPECT_LT(sim.sched.stats().waiting, waiting);
  ASSERT_NO_FATAL_FAILURE(sim.drain(200));
}

TEST(SchedulerDeathTest, FinishOrScheduleDuringAStepIsAProgrammingError) {
  SEEDED();
  std::mt19937_64 rng(seed);
  Scheduler s(small_config(8, 4));
  ASSERT_TRUE(s.add(1, random_tokens(rng, 5), "", 3).is_ok());
  ScheduledStep st = s.schedule();
  ASSERT_EQ(st.seqs.size(), 1u);
  EXPECT_DEATH(s.finish(1), "between schedule\\(\\) and complete\\(\\)");
  EXPECT_DEATH(s.schedule(), "before complete\\(\\)");
  // Other sequences may come and go while the step runs.
  ASSERT_TRUE(s.add(2, random_tokens(rng, 5), "", 3).is_ok());
  s.finish(2);
  EXPECT_FALSE(s.has(2));
  EXPECT_TRUE(s.complete(st, {7}).empty());
  s.finish(1);
  EXPECT_TRUE(s.idle());
}

TEST(Scheduler, MaxLorasLimitsDistinctAdaptersPerStep) {
  SEEDED();
  SchedulerConfig c = small_config(256, 4);
  c.max_loras = 2;
  c.max_num_seqs = 8;
  Sim sim(c, seed);
  SeqId id = 0;
  for (int round = 0; round < 4; ++round) {
    for (std::string a : {"a", "b", "c", ""})
      ASSERT_TRUE(sim.add(id++, random_tokens(sim.rng, 1 + static_cast<int64_t>(sim.rng() % 30)), a,
                          1 + static_cast<int>(sim.rng() % 12))
                      .is_ok());
  }
  std::set<std::string> ran;
  for (int i = 0; i < 500 && !sim.sched.idle(); ++i) {
    ASSERT_NO_FATAL_FAILURE(sim.step());  // checks <= 2 distinct adapters in every step
    for (const auto& r : sim.last.seqs) ran.insert(r.adapter);
  }
  ASSERT_TRUE(sim.sched.idle());
  EXPECT_EQ(sim.done.size(), static_cast<size_t>(id));
  EXPECT_EQ(ran, (std::set<std::string>{"", "a", "b", "c"}));
  EXPECT_EQ(sim.max_step_adapters, 2u);  // the limit was reached, not avoided
}

TEST(Scheduler, AnAdapterOverTheLimitDoesNotBlockOthers) {
  SEEDED();
  SchedulerConfig c = small_config(256, 4);
  c.max_loras = 1;
  Sim sim(c, seed);
  ASSERT_TRUE(sim.add(1, random_tokens(sim.rng, 4), "a", 30).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.step());
  ASSERT_TRUE(sim.add(2, random_tokens(sim.rng, 4), "b", 3).is_ok());
  ASSERT_TRUE(sim.add(3, random_tokens(sim.rng, 4), "", 3).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.step());
  EXPECT_NE(row_of(sim.last, 3), nullptr);  // base overtakes "b", which must wait for "a"
  while (sim.sched.has(1)) {
    EXPECT_EQ(row_of(sim.last, 2), nullptr);
    ASSERT_NO_FATAL_FAILURE(sim.step());
  }
  ASSERT_NO_FATAL_FAILURE(sim.drain(20));
}

TEST(Scheduler, RoundRobinAdmitsAnAdapterRequestDespiteABaseStream) {
  SEEDED();
  SchedulerConfig c = small_config(512, 4);
  c.max_num_seqs = 4;
  Sim sim(c, seed);
  SeqId id = 0;
  auto add_base = [&] {
    for (int k = 0; k < 2; ++k) ASSERT_TRUE(sim.add(id++, random_tokens(sim.rng, 5), "", 3).is_ok());
  };
  for (int i = 0; i < 30; ++i) {
    ASSERT_NO_FATAL_FAILURE(add_base());
    ASSERT_NO_FATAL_FAILURE(sim.step());
  }
  // Base arrivals outrun the 4 sequence slots (about 4 admissions per 3 steps): a FIFO queue would
  // keep "x" behind all of them for more than 10 steps.
  ASSERT_GE(sim.sched.stats().waiting, 16);
  const SeqId x = 1000000;
  ASSERT_TRUE(sim.add(x, random_tokens(sim.rng, 5), "x", 3).is_ok());
  int waited = 0;
  while (true) {
    ASSERT_NO_FATAL_FAILURE(add_base());
    ASSERT_NO_FATAL_FAILURE(sim.step());
    ++waited;
    if (row_of(sim.last, x)) break;
    ASSERT_LT(waited, 6) << "adapter request still waiting";
  }
}

TEST(Scheduler, AddRejectsBadRequestsWithTheNumbers) {
  SchedulerConfig c = small_config(4, 4);  // 16 token slots
  c.max_model_len = 50;
  Scheduler s(c);
  std::vector<int32_t> p(10, 1);
  auto expect_error = [&](Status st, ErrorCode code, std::vector<std::string> parts) {
    ASSERT_FALSE(st.is_ok());
    EXPECT_EQ(st.code(), code);
    for (const auto& part : parts) EXPECT_NE(st.message().find(part), std::string::npos) << st.message();
  };
  expect_error(s.add(1, {}, "", 3), ErrorCode::kInvalidArgument, {"empty prompt"});
  expect_error(s.add(1, p, "", 0), ErrorCode::kInvalidArgument, {"max_new_tokens 0"});
  expect_error(s.add(1, std::vector<int32_t>(45, 1), "", 8), ErrorCode::kOutOfRange, {"45", "8", "53", "50"});
  expect_error(s.add(1, p, "", 7), ErrorCode::kOutOfRange, {"10", "7", "17", "16", "4 blocks x 4"});
  EXPECT_TRUE(s.idle());
  ASSERT_TRUE(s.add(1, p, "", 6).is_ok());  // exactly the whole cache
  expect_error(s.add(1, p, "", 1), ErrorCode::kInvalidArgument, {"already in use"});
  SchedulerConfig base_only = c;
  base_only.max_loras = 0;
  Scheduler b(base_only);
  expect_error(b.add(2, p, "kjv", 1), ErrorCode::kInvalidArgument, {"kjv", "max_loras is 0"});
  EXPECT_TRUE(b.add(2, p, "", 1).is_ok());
}

TEST(Scheduler, SequencesFillingTheWholeCacheOrMaxModelLenFinish) {
  SEEDED();
  SchedulerConfig c = small_config(4, 4);
  c.max_model_len = 16;
  Sim sim(c, seed);
  for (SeqId id = 0; id < 3; ++id) ASSERT_TRUE(sim.add(id, random_tokens(sim.rng, 11), "", 5).is_ok());
  ASSERT_NO_FATAL_FAILURE(sim.drain(200));
  for (auto& [id, tokens] : sim.done) EXPECT_EQ(tokens.size(), 16u);
}

// Random arrivals (shared prefixes, exact repeats, next turns of finished conversations), random
// adapters, random finishes; every step checked by Sim, then drained to zero used blocks.
void run_random(SchedulerConfig c, int steps, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "blocks " << c.num_blocks << " x " << c.block_size << ", seqs "
                                    << c.max_num_seqs << ", budget " << c.max_num_batched_tokens << ", loras "
                                    << c.max_loras << ", prefix " << c.prefix_caching);
  Sim sim(c, seed);
  std::mt19937_64& rng = sim.rng;
  const int64_t cap = std::min<int64_t>(c.max_model_len, static_cast<int64_t>(c.num_blocks) * c.block_size);
  std::vector<std::vector<int32_t>> prefixes, prompts;
  for (int k = 0; k < 4; ++k) {
    prefixes.push_back(random_tokens(rng, 1 + static_cast<int64_t>(rng() % (3 * c.block_size))));
  }
  const std::vector<std::string> adapters = {"", "a", "b", "c"};
  SeqId next = 1;
  for (int step = 0; step < steps; ++step) {
    int arrivals = rng() % 100 < 30 ? 1 + static_cast<int>(rng() % 3) : 0;
    for (int k = 0; k < arrivals; ++k) {
      std::vector<int32_t> p;
      uint64_t kind = rng() % 10;
      if (kind < 5) {
        p = concat(prefixes[rng() % prefixes.size()], random_tokens(rng, static_cast<int64_t>(rng() % 20)));
      } else if (kind == 5 && !prompts.empty()) {
        p = prompts[rng() % prompts.size()];
      } else if (kind == 6 && !sim.done.empty()) {
        p = concat(std::next(sim.done.begin(), static_cast<long>(rng() % sim.done.size()))->second,
                   random_tokens(rng, 1 + static_cast<int64_t>(rng() % 4)));
      } else {
        p = random_tokens(rng, 1 + static_cast<int64_t>(rng() % 40));
      }
      if (static_cast<int64_t>(p.size()) > cap - 1) p.resize(static_cast<size_t>(cap - 1));
      prompts.push_back(p);
      int max_new = 1 + static_cast<int>(rng() % std::min<int64_t>(40, cap - static_cast<int64_t>(p.size())));
      ASSERT_TRUE(sim.add(next++, p, adapters[rng() % adapters.size()], max_new).is_ok());
    }
    if (rng() % 100 < 5 && !sim.live.empty()) {
      SeqId victim = std::next(sim.live.begin(), static_cast<long>(rng() % sim.live.size()))->first;
      ASSERT_NO_FATAL_FAILURE(sim.finish(victim));
    }
    ASSERT_NO_FATAL_FAILURE(sim.step());
  }
  ASSERT_NO_FATAL_FAILURE(sim.drain(50000));
  SchedulerStats s = sim.sched.stats();
  if (c.prefix_caching) {
    EXPECT_GT(s.prefix_hits, 0);
  } else {
    EXPECT_EQ(s.prefix_queries, 0);
    EXPECT_EQ(s.blocks_cached, 0);
  }
}

TEST(Scheduler, RandomSimulationKeepsEveryInvariant) {
  SEEDED();
  auto cfg = [](int blocks, int bs, int seqs, int64_t budget, int mml, int loras, bool prefix) {
    SchedulerConfig c;
    c.num_blocks = blocks;
    c.block_size = bs;
    c.max_num_seqs = seqs;
    c.max_num_batched_tokens = budget;
    c.max_model_len = mml;
    c.max_loras = loras;
    c.prefix_caching = prefix;
    return c;
  };
  const SchedulerConfig configs[] = {
      cfg(48, 4, 8, 24, 128, 2, true),   // moderate
      cfg(12, 8, 6, 16, 96, 1, true),    // tiny cache: constant preemption
      cfg(200, 1, 16, 40, 64, 3, true),  // one-token blocks
      cfg(40, 16, 32, 512, 256, 8, false),
      cfg(64, 4, 16, 6, 96, 2, true),    // token budget below max_num_seqs
  };
  uint64_t k = 0;
  for (const SchedulerConfig& c : configs) ASSERT_NO_FATAL_FAILURE(run_random(c, 3000, seed + k++));
}

}  // namespace
}  // namespace nb::engine
