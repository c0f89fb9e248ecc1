// Scheduler (scheduler.h). One step is built in three phases:
//   1. decode rows: every running sequence whose prompt is computed gets its one token, oldest
//      first; a sequence that cannot get a block preempts the most recently admitted ones;
//   2. prefill continuation: a partly prefilled running sequence takes a chunk of the remaining
//      token budget, shrunk to the blocks it may take (see the watermark below);
//   3. admission: preempted sequences first, then new arrivals round-robin across adapters, FIFO
//      within one, each needing the blocks for its whole chunk; the first that cannot get them
//      stops admission for this step (no overtaking, so long prompts are not starved).
//
// Watermark: every running sequence "needs" one block when its next token starts a new block
// (its table is exactly full after this step and it does not finish in this step). Phases 2 and 3
// only take blocks above the sum of those needs (`reserve`), so admitting a sequence never forces
// the next step's decode rows to preempt. Phase 1 may use the reserve: that is what it is for.
// A step that preempted admits nobody: the memory just went back because it was short.
//
// Progress: at most one running sequence is partly prefilled. Admission stops when a chunk is cut
// short by the budget (the budget is then spent), and it cannot succeed while an older prefill
// was cut short by memory (that prefill took every block above the reserve). So when no decode
// row runs, the one partial prefill runs alone, and alone a sequence always fits (add() checks
// prompt + max_new_tokens against the whole cache): a step is empty only when nothing is queued.
#include "engine/scheduler.h"

#include <algorithm>
#include <deque>
#include <span>
#include <unordered_map>
#include <unordered_set>

#include "engine/kv_cache_manager.h"

namespace nb::engine {

int64_t ScheduledStep::num_tokens() const {
  int64_t n = 0;
  for (const ScheduledSeq& s : seqs) n += static_cast<int64_t>(s.tokens.size());
  return n;
}

namespace {

enum class SeqState { kQueued, kResumed, kRunning };  // queued = new arrival, resumed = preempted

struct Seq {
  SeqId id = 0;
  std::string adapter;
  std::vector<int32_t> tokens;  // prompt + generated: what a (re)prefill computes
  std::vector<int32_t> generated;
  int max_new_tokens = 0;
  SeqState state = SeqState::kQueued;
  int64_t computed = 0;          // tokens [0, computed) have their KV in `table`
  int64_t planned = 0;           // tokens [computed, end()) are in the step in flight
  std::vector<int32_t> table;    // blocks covering [0, end()), exactly
  std::vector<uint64_t> hashes;  // content hashes of the first full token blocks (kept across preemption)
  size_t registered = 0;         // table[0, registered) were offered to the prefix cache

  int64_t end() const { return computed + planned; }
  int64_t size() const { return static_cast<int64_t>(tokens.size()); }
};

unsigned long long ull(SeqId id) { return static_cast<unsigned long long>(id); }

}  // namespace

struct Scheduler::Impl {
  struct Step {  // what schedule() is building
    int64_t budget = 0;
    std::vector<Seq*> planned;
    std::vector<SeqId> preempted;
  };
  struct Pick {  // an admission candidate and where it waits
    Seq* seq = nullptr;
    bool resumed = false;
    size_t index = 0;  // in `resumed`, or in `ring`
  };

  explicit Impl(const SchedulerConfig& c)
      : cfg(c),
        kv(c.num_blocks, c.block_size),
        bs(c.block_size),
        // Every running sequence must fit its decode row in the token budget.
        max_running(static_cast<size_t>(std::min<int64_t>(c.max_num_seqs, c.max_num_batched_tokens))) {}

  const SchedulerConfig cfg;
  KvCacheManager kv;
  const int64_t bs;
  const size_t max_running;
  std::unordered_map<SeqId, std::unique_ptr<Seq>> seqs;
  std::vector<Seq*> running;  // admission order: oldest first; preemption takes from the back
  std::deque<Seq*> resumed;   // preempted sequences, admitted before new arrivals
  std::unordered_map<std::string, std::deque<Seq*>> queues;  // new arrivals per adapter, FIFO; never empty
  std::vector<std::string> ring;  // the adapters of `queues`, in round-robin order
  size_t cursor = 0;              // the ring index served next
  size_t num_queued = 0;
  int64_t reserve = 0;  // during schedule(): sum of need() over running sequences
  bool in_flight = false;
  int64_t prefix_queries = 0, prefix_hits = 0, preemptions = 0;

  int64_t blocks_for(int64_t tokens) const { return (tokens + bs - 1) / bs; }
  int64_t new_blocks(const Seq& s, int64_t end) const {
    return std::max<int64_t>(0, blocks_for(end) - static_cast<int64_t>(s.table.size()));
  }
  std::span<const int32_t> block_tokens(const Seq& s, size_t i) const {
    return std::span<const int32_t>(s.tokens).subspan(i * bs, bs);
  }
  // A step computing s up to `end` samples its last token, and that token ends the sequence.
  bool finishes_at(const Seq& s, int64_t end) const {
    return end == s.size() && (static_cast<int64_t>(s.generated.size()) + 1 >= s.max_new_tokens ||
                               s.size() + 1 >= cfg.max_model_len);
  }
  // 1 when s, computed up to `end`, has a full table and goes on: its next token needs a new block.
  int need_at(const Seq& s, int64_t end) const { return end % bs == 0 && !finishes_at(s, end) ? 1 : 0; }
  int need(const Seq& s) const { return need_at(s, s.end()); }

  void grow(Seq& s) {
    while (static_cast<int64_t>(s.table.size()) < blocks_for(s.end())) s.table.push_back(kv.allocate());
  }
  // Tail first, so that the tail of a cached prefix is evicted before its head.
  void free_blocks(Seq& s) {
    for (auto it = s.table.rbegin(); it != s.table.rend(); ++it) kv.release(*it);
    s.table.clear();
    s.computed = s.planned = 0;
    s.registered = 0;
  }

  void plan(Step& st, Seq& s, int64_t n);
  void preempt(Step& st);
  void schedule_decodes(Step& st);
  int64_t fit_end(const Seq& s, int64_t end, int64_t room) const;
  void continue_prefills(Step& st);
  void admit_waiting(Step& st);
  Pick pick(const std::unordered_set<std::string>& adapters) const;
  bool try_admit(Step& st, Seq& c);
  void take(const Pick& p);
  void enqueue(Seq* s);
  void remove_from_ring(size_t i);
  void remove(Seq& s);
  void ensure_hashes(Seq& s, size_t n);
  std::vector<int32_t> lookup_prefix(Seq& s, int64_t* looked_up);
  void register_full_blocks(Seq& s);
  ScheduledSeq row(const Seq& s) const;
  Status check_seq_tables(std::vector<int>& refs) const;
  Status check_queues() const;
};

void Scheduler::Impl::plan(Step& st, Seq& s, int64_t n) {
  NB_CHECK(s.planned == 0 && n > 0 && n <= st.budget && s.computed + n <= s.size(),
           "plan(%llu, %lld): planned %lld, budget %lld, computed %lld of %lld", ull(s.id), static_cast<long long>(n),
           static_cast<long long>(s.planned), static_cast<long long>(st.budget), static_cast<long long>(s.computed),
           static_cast<long long>(s.size()));
  reserve -= need(s);
  s.planned = n;
  grow(s);
  reserve += need(s);
  st.budget -= n;
  st.planned.push_back(&s);
}

// The most recently admitted running sequence gives its blocks back and waits at the front.
void Scheduler::Impl::preempt(Step& st) {
  Seq* v = running.back();
  NB_CHECK(v->planned == 0, "preempting %llu, which is already in this step", ull(v->id));
  reserve -= need(*v);
  running.pop_back();
  free_blocks(*v);  // its full blocks stay cached: the recompute may find them again
  v->state = SeqState::kResumed;
  resumed.push_front(v);
  ++preemptions;
  st.preempted.push_back(v->id);
}

void Scheduler::Impl::schedule_decodes(Step& st) {
  for (size_t i = 0; i < running.size();) {
    Seq& s = *running[i];
    if (s.computed + 1 != s.size()) {  // still prefilling: phase 2
      ++i;
      continue;
    }
    if (new_blocks(s, s.computed + 1) <= kv.num_available()) {
      plan(st, s, 1);
      ++i;
      continue;
    }
    // Alone, a sequence always fits (add() checks it against the whole cache).
    NB_CHECK(running.size() > 1, "sequence %llu alone finds no KV block", ull(s.id));
    preempt(st);  // the newest; when that is s itself, s was last and the loop ends
  }
}

// The furthest end <= `end` for s that takes at most `room` new blocks, itself included in the
// watermark (it keeps a block for its own next token when it would stop exactly at a block end).
int64_t Scheduler::Impl::fit_end(const Seq& s, int64_t end, int64_t room) const {
  room = std::max<int64_t>(room, 0);
  end = std::min(end, (static_cast<int64_t>(s.table.size()) + room) * bs);
  if (end > s.computed && new_blocks(s, end) + need_at(s, end) > room) --end;
  return end;
}

void Scheduler::Impl::continue_prefills(Step& st) {
  for (Seq* p : running) {
    Seq& s = *p;
    if (st.budget == 0) break;
    if (s.planned > 0) continue;  // a decode row
    int64_t room = kv.num_available() - (reserve - need(s));
    int64_t end = fit_end(s, s.computed + std::min(st.budget, s.size() - s.computed), room);
    if (end > s.computed) plan(st, s, end - s.computed);
  }
}

void Scheduler::Impl::admit_waiting(Step& st) {
  if (!st.preempted.empty()) return;
  std::unordered_set<std::string> adapters;  // running sequences' adapters count first
  for (const Seq* s : running) {
    if (!s->adapter.empty()) adapters.insert(s->adapter);
  }
  while (st.budget > 0 && running.size() < max_running) {
    Pick p = pick(adapters);
    if (!p.seq || !try_admit(st, *p.seq)) break;
    take(p);
    if (!p.seq->adapter.empty()) adapters.insert(p.seq->adapter);
  }
}

// Preempted sequences first (in order), then the ring from the cursor; a sequence whose adapter
// would exceed max_loras distinct adapters in this step is passed over (it keeps its place).
Scheduler::Impl::Pick Scheduler::Impl::pick(const std::unordered_set<std::string>& adapters) const {
  auto fits = [&](const std::string& a) {
    return a.empty() || adapters.count(a) != 0 || static_cast<int>(adapters.size()) < cfg.max_loras;
  };
  for (size_t i = 0; i < resumed.size(); ++i) {
    if (fits(resumed[i]->adapter)) return {resumed[i], true, i};
  }
  for (size_t k = 0; k < ring.size(); ++k) {
    size_t i = (cursor + k) % ring.size();
    if (fits(ring[i])) return {queues.at(ring[i]).front(), false, i};
  }
  return {};
}

bool Scheduler::Impl::try_admit(Step& st, Seq& c) {
  int64_t looked_up = 0;
  std::vector<int32_t> hits = lookup_prefix(c, &looked_up);
  int64_t start = static_cast<int64_t>(hits.size()) * bs;
  int64_t end = start + std::min(st.budget, c.size() - start);
  // Hits now cached (unreferenced) leave the available pool just as new blocks do.
  int64_t cost = blocks_for(end) - static_cast<int64_t>(hits.size());
  for (int32_t b : hits) cost += kv.ref_count(b) == 0 ? 1 : 0;
  if (kv.num_available() - cost < reserve + need_at(c, end)) return false;
  for (int32_t b : hits) kv.share(b);
  c.table = std::move(hits);
  c.computed = start;
  c.registered = c.table.size();
  prefix_queries += looked_up * bs;
  prefix_hits += start;
  c.state = SeqState::kRunning;
  running.push_back(&c);
  reserve += need(c);
  plan(st, c, end - start);
  return true;
}

void Scheduler::Impl::take(const Pick& p) {
  if (p.resumed) {
    resumed.erase(resumed.begin() + static_cast<std::ptrdiff_t>(p.index));
    return;
  }
  std::deque<Seq*>& q = queues.at(ring[p.index]);
  q.pop_front();
  --num_queued;
  cursor = p.index + 1;  // the next adapter in the ring is served next
  if (q.empty()) remove_from_ring(p.index);
  if (cursor >= ring.size()) cursor = 0;
}

void Scheduler::Impl::enqueue(Seq* s) {
  std::deque<Seq*>& q = queues[s->adapter];
  if (q.empty()) ring.push_back(s->adapter);
  q.push_back(s);
  ++num_queued;
}

void Scheduler::Impl::remove_from_ring(size_t i) {
  queues.erase(ring[i]);
  ring.erase(ring.begin() + static_cast<std::ptrdiff_t>(i));
  if (cursor > i) --cursor;
  if (cursor >= ring.size()) cursor = 0;
}

// Forgets s wherever it is and frees its blocks.
void Scheduler::Impl::remove(Seq& s) {
  if (s.state == SeqState::kRunning) {
    running.erase(std::find(running.begin(), running.end(), &s));
    free_blocks(s);
  } else if (s.state == SeqState::kResumed) {
    resumed.erase(std::find(resumed.begin(), resumed.end(), &s));
  } else {
    std::deque<Seq*>& q = queues.at(s.adapter);
    q.erase(std::find(q.begin(), q.end(), &s));
    --num_queued;
    if (q.empty()) remove_from_ring(static_cast<size_t>(std::find(ring.begin(), ring.end(), s.adapter) - ring.begin()));
  }
  SeqId id = s.id;  // erase() destroys s: do not pass it a reference into s
  seqs.erase(id);
}

void Scheduler::Impl::ensure_hashes(Seq& s, size_t n) {
  NB_CHECK(static_cast<int64_t>(n) * bs <= s.size(), "hashing %zu blocks of a %lld-token sequence", n,
           static_cast<long long>(s.size()));
  while (s.hashes.size() < n) {
    size_t i = s.hashes.size();
    uint64_t parent = i == 0 ? KvCacheManager::kRootHash : s.hashes[i - 1];
    s.hashes.push_back(KvCacheManager::hash_block(parent, s.adapter, block_tokens(s, i)));
  }
}

// The longest run of cached full blocks from position 0, leaving at least the last token to
// compute (its logits give the next token): a prompt of exactly k blocks looks up k - 1.
std::vector<int32_t> Scheduler::Impl::lookup_prefix(Seq& s, int64_t* looked_up) {
  std::vector<int32_t> hits;
  *looked_up = 0;
  if (!cfg.prefix_caching) return hits;
  size_t n = static_cast<size_t>((s.size() - 1) / bs);
  ensure_hashes(s, n);
  *looked_up = static_cast<int64_t>(n);
  for (size_t i = 0; i < n; ++i) {
    uint64_t parent = i == 0 ? KvCacheManager::kRootHash : s.hashes[i - 1];
    int32_t b = kv.lookup(s.hashes[i], parent, s.adapter, block_tokens(s, i));
    if (b < 0) break;
    hits.push_back(b);
  }
  return hits;
}

// Blocks that just became full of computed tokens (prompt or generated) join the prefix cache.
void Scheduler::Impl::register_full_blocks(Seq& s) {
  if (!cfg.prefix_caching) return;
  size_t full = static_cast<size_t>(s.computed / bs);
  if (full <= s.registered) return;
  ensure_hashes(s, full);
  for (size_t i = s.registered; i < full; ++i) {
    uint64_t parent = i == 0 ? KvCacheManager::kRootHash : s.hashes[i - 1];
    kv.register_block(s.table[i], s.hashes[i], parent, s.adapter, block_tokens(s, i));
  }
  s.registered = full;
}

ScheduledSeq Scheduler::Impl::row(const Seq& s) const {
  ScheduledSeq r;
  r.id = s.id;
  r.adapter = s.adapter;
  r.tokens.assign(s.tokens.begin() + s.computed, s.tokens.begin() + s.end());
  r.start = s.computed;
  r.block_table = s.table;
  r.sample = s.end() == s.size();
  return r;
}

// ---------------------------------------------------------------------------------------------

Scheduler::Scheduler(SchedulerConfig config) : config_(config) {
  NB_CHECK(config.num_blocks > 0 && config.block_size > 0 && config.max_num_seqs > 0 &&
               config.max_num_batched_tokens > 0 && config.max_model_len > 0 && config.max_loras >= 0,
           "SchedulerConfig: num_blocks %d, block_size %d, max_num_seqs %d, max_num_batched_tokens %lld, "
           "max_model_len %d, max_loras %d",
           config.num_blocks, config.block_size, config.max_num_seqs,
           static_cast<long long>(config.max_num_batched_tokens), config.max_model_len, config.max_loras);
  impl_ = std::make_unique<Impl>(config_);
}

Scheduler::~Scheduler() = default;

Status Scheduler::add(SeqId id, std::vector<int32_t> prompt, std::string adapter, int max_new_tokens) {
  const std::string who = strformat("sequence %llu: ", ull(id));
  if (prompt.empty()) return invalid_argument(who + "empty prompt, expected at least 1 token");
  if (impl_->seqs.count(id) != 0) return invalid_argument(who + "id already in use");
  if (max_new_tokens < 1) return invalid_argument(who + strformat("max_new_tokens %d, expected >= 1", max_new_tokens));
  if (!adapter.empty() && config_.max_loras == 0)
    return invalid_argument(who + "adapter '" + adapter + "' requested but max_loras is 0 (base model only)");
  int64_t total = static_cast<int64_t>(prompt.size()) + max_new_tokens;
  if (total > config_.max_model_len)
    return out_of_range(who + strformat("prompt of %zu tokens + max_new_tokens %d = %lld, expected <= max_model_len %d",
                                        prompt.size(), max_new_tokens, static_cast<long long>(total),
                                        config_.max_model_len));
  int64_t capacity = static_cast<int64_t>(config_.num_blocks) * config_.block_size;
  if (total > capacity)
    return out_of_range(who + strformat("prompt of %zu tokens + max_new_tokens %d = %lld, expected <= the KV cache's "
                                        "%lld tokens (%d blocks x %d)",
                                        prompt.size(), max_new_tokens, static_cast<long long>(total),
                                        static_cast<long long>(capacity), config_.num_blocks, config_.block_size));
  auto s = std::make_unique<Seq>();
  s->id = id;
  s->adapter = std::move(adapter);
  s->tokens = std::move(prompt);
  s->max_new_tokens = max_new_tokens;
  impl_->enqueue(s.get());
  impl_->seqs.emplace(id, std::move(s));
  return Status::ok();
}

ScheduledStep Scheduler::schedule() {
  Impl& m = *impl_;
  NB_CHECK(!m.in_flight, "schedule() called again before complete() of the previous step");
  Impl::Step st;
  st.budget = config_.max_num_batched_tokens;
  m.reserve = 0;
  for (const Seq* s : m.running) m.reserve += m.need(*s);
  m.schedule_decodes(st);
  m.continue_prefills(st);
  m.admit_waiting(st);
  ScheduledStep out;
  out.preempted = std::move(st.preempted);
  out.seqs.reserve(st.planned.size());
  for (const Seq* s : st.planned) out.seqs.push_back(m.row(*s));
  m.in_flight = !out.seqs.empty();
  NB_CHECK(m.in_flight || m.seqs.empty(), "schedule(): %zu sequences wait but none can run", m.seqs.size());
  return out;
}

std::vector<SeqId> Scheduler::complete(const ScheduledStep& step, const std::vector<int32_t>& sampled) {
  Impl& m = *impl_;
  NB_CHECK(sampled.size() == step.seqs.size(), "complete(): %zu sampled tokens for %zu rows", sampled.size(),
           step.seqs.size());
  NB_CHECK(m.in_flight || step.empty(), "complete() without a step in flight");
  m.in_flight = false;
  std::vector<SeqId> finished;
  for (size_t i = 0; i < step.seqs.size(); ++i) {
    const ScheduledSeq& r = step.seqs[i];
    auto it = m.seqs.find(r.id);
    NB_CHECK(it != m.seqs.end(), "complete(): unknown sequence %llu", ull(r.id));
    Seq& s = *it->second;
    NB_CHECK(s.state == SeqState::kRunning && s.computed == r.start &&
                 s.planned == static_cast<int64_t>(r.tokens.size()),
             "complete(): row for %llu does not match the step scheduled", ull(r.id));
    s.computed += s.planned;
    s.planned = 0;
    m.register_full_blocks(s);
    if (s.computed < s.size()) continue;  // a prefill chunk that is not the last
    s.tokens.push_back(sampled[i]);
    s.generated.push_back(sampled[i]);
    if (static_cast<int64_t>(s.generated.size()) >= s.max_new_tokens || s.size() >= config_.max_model_len) {
      finished.push_back(s.id);
      m.remove(s);
    }
  }
  for (const Seq* s : m.running) {
    NB_CHECK(s->planned == 0, "complete(): the step's row for %llu is missing", ull(s->id));
  }
  return finished;
}

void Scheduler::finish(SeqId id) {
  auto it = impl_->seqs.find(id);
  if (it == impl_->seqs.end()) return;
  NB_CHECK(it->second->planned == 0, "finish(%llu) between schedule() and complete() of its step", ull(id));
  impl_->remove(*it->second);
}

bool Scheduler::has(SeqId id) const { return impl_->seqs.count(id) != 0; }

bool Scheduler::idle() const { return impl_->seqs.empty(); }

const std::vector<int32_t>& Scheduler::generated(SeqId id) const {
  auto it = impl_->seqs.find(id);
  NB_CHECK(it != impl_->seqs.end(), "generated(%llu): unknown or finished sequence", ull(id));
  return it->second->generated;
}

SchedulerStats Scheduler::stats() const {
  const Impl& m = *impl_;
  SchedulerStats s;
  s.running = static_cast<int>(m.running.size());
  s.waiting = static_cast<int>(m.resumed.size() + m.num_queued);
  s.blocks_total = m.kv.num_blocks();
  s.blocks_used = m.kv.num_used();
  s.blocks_cached = m.kv.num_cached();
  s.prefix_queries = m.prefix_queries;
  s.prefix_hits = m.prefix_hits;
  s.preemptions = m.preemptions;
  return s;
}

// ---------------------------------------------------------------------------------------------

// Block tables of running sequences; counts in refs[block] how many tables hold each block.
Status Scheduler::Impl::check_seq_tables(std::vector<int>& refs) const {
  std::vector<int64_t> index_of(refs.size(), -1);
  for (const auto& [id, p] : seqs) {
    const Seq& s = *p;
    if (s.state != SeqState::kRunning) {
      if (!s.table.empty() || s.computed != 0 || s.planned != 0)
        return internal_error(strformat("waiting sequence %llu holds blocks or computed tokens", ull(id)));
      continue;
    }
    if (s.computed >= s.size() || s.end() > s.size() ||
        static_cast<int64_t>(s.table.size()) != blocks_for(s.end()))
      return internal_error(strformat("sequence %llu: computed %lld, planned %lld, %lld tokens, %zu blocks", ull(id),
                                      static_cast<long long>(s.computed), static_cast<long long>(s.planned),
                                      static_cast<long long>(s.size()), s.table.size()));
    for (size_t i = 0; i < s.table.size(); ++i) {
      int32_t b = s.table[i];
      if (b < 0 || b >= kv.num_blocks()) return internal_error(strformat("sequence %llu: block id %d", ull(id), b));
      // A block in several tables (or registered) is a full prefix block, the same in each of them:
      // nobody writes into it again.
      if (index_of[b] != -1 && index_of[b] != static_cast<int64_t>(i))
        return internal_error(strformat("block %d at index %zu of sequence %llu and at index %lld elsewhere", b, i,
                                        ull(id), static_cast<long long>(index_of[b])));
      index_of[b] = static_cast<int64_t>(i);
      ++refs[b];
      if (kv.is_registered(b) &&
          (s.computed < static_cast<int64_t>(i + 1) * bs || i >= s.hashes.size() || kv.block_hash(b) != s.hashes[i]))
        return internal_error(strformat("sequence %llu: registered block %d at index %zu is not its full computed "
                                        "prefix block",
                                        ull(id), b, i));
    }
  }
  return Status::ok();
}

Status Scheduler::Impl::check_queues() const {
  size_t queued = 0;
  for (const auto& [adapter, q] : queues) {
    if (q.empty() || std::count(ring.begin(), ring.end(), adapter) != 1)
      return internal_error("adapter queue '" + adapter + "' empty or not once in the ring");
    for (const Seq* s : q) {
      if (s->state != SeqState::kQueued || s->adapter != adapter)
        return internal_error(strformat("sequence %llu in queue '%s' has another state or adapter", ull(s->id),
                                        adapter.c_str()));
    }
    queued += q.size();
  }
  if (queued != num_queued || ring.size() != queues.size() || (!ring.empty() && cursor >= ring.size()))
    return internal_error(strformat("queues hold %zu, counted %zu; ring %zu, queues %zu, cursor %zu", queued,
                                    num_queued, ring.size(), queues.size(), cursor));
  for (const Seq* s : resumed) {
    if (s->state != SeqState::kResumed) return internal_error(strformat("resumed %llu not resumed", ull(s->id)));
  }
  std::unordered_set<std::string> adapters;
  int prefilling = 0;  // see "Progress" at the top of this file
  for (const Seq* s : running) {
    if (s->state != SeqState::kRunning) return internal_error(strformat("running %llu not running", ull(s->id)));
    if (!s->adapter.empty()) adapters.insert(s->adapter);
    bool partial = s->planned > 0 ? s->end() < s->size() : s->computed + 1 < s->size();  // after the step
    prefilling += partial ? 1 : 0;
  }
  if (prefilling > 1) return internal_error(strformat("%d running sequences are partly prefilled", prefilling));
  if (running.size() + resumed.size() + num_queued != seqs.size())
    return internal_error(strformat("%zu running + %zu resumed + %zu queued != %zu sequences", running.size(),
                                    resumed.size(), num_queued, seqs.size()));
  if (running.size() > max_running || static_cast<int>(adapters.size()) > cfg.max_loras)
    return internal_error(strformat("%zu running (max %zu) with %zu adapters (max %d)", running.size(), max_running,
                                    adapters.size(), cfg.max_loras));
  return Status::ok();
}

Status Scheduler::check_invariants() const {
  const Impl& m = *impl_;
  NB_RETURN_IF_ERROR(m.kv.check_invariants());
  NB_RETURN_IF_ERROR(m.check_queues());
  std::vector<int> refs(static_cast<size_t>(m.kv.num_blocks()), 0);
  NB_RETURN_IF_ERROR(m.check_seq_tables(refs));
  for (int32_t b = 0; b < m.kv.num_blocks(); ++b) {
    if (m.kv.ref_count(b) != refs[b])
      return internal_error(
          strformat("block %d: ref_count %d, held by %d block tables", b, m.kv.ref_count(b), refs[b]));
    if (refs[b] > 1 && !m.kv.is_registered(b))
      return internal_error(strformat("block %d shared by %d tables but not a registered prefix block", b, refs[b]));
  }
  return Status::ok();
}

}  // namespace nb::engine
