// The scheduler: which sequences run in the next forward step and with which KV blocks. Pure logic
// (no device, no model, no threads): unit-tested on the CPU (design.md: engine).
//
// Continuous batching: every step holds the decode rows of the running sequences (one token each)
// plus prefill chunks of waiting or partly prefilled sequences, within a token budget
// (max_num_batched_tokens) and a sequence budget (max_num_seqs). A step never names more distinct
// adapters than there are adapter slots (max_loras).
//
// KV cache: paged blocks of block_size tokens with reference counts. Automatic prefix caching: a
// full block is identified by the hash of (adapter, all tokens up to and including that block), so
// sequences with the same adapter and the same prompt prefix share those blocks and skip computing
// them; two adapters never share KV. Freed full blocks stay cached (evictable, LRU) until their
// memory is needed.
//
// Preemption by recompute: when a running sequence needs a new block and none is free (nor
// evictable), the most recently admitted running sequences give their blocks back and return to
// the front of the queue; when rescheduled they prefill prompt + generated tokens again (the prefix
// cache may still hold some of it) and continue. Nothing a client received is taken back: the
// first token sampled after the recomputation is the next new token.
//
// Fairness: waiting sequences are admitted round-robin across adapters (base model = adapter "").
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace nb::engine {

using SeqId = uint64_t;

struct SchedulerConfig {
  int num_blocks = 0;               // KV blocks in the cache
  int block_size = 16;              // tokens per block
  int max_num_seqs = 256;           // sequences in one step
  int64_t max_num_batched_tokens = 2048;  // new tokens in one step (decode rows count 1 each)
  int max_model_len = 4096;         // prompt + generated tokens of one sequence
  int max_loras = 8;                // distinct non-base adapters in one step
  bool prefix_caching = true;
};

// One sequence's share of a step: feed `tokens` at positions [start, start + tokens.size()).
struct ScheduledSeq {
  SeqId id = 0;
  std::string adapter;               // "" = base model
  std::vector<int32_t> tokens;       // prefill chunk, or the one token to decode
  int64_t start = 0;                 // position of tokens[0] (tokens before it are in the cache)
  std::vector<int32_t> block_table;  // physical blocks covering [0, start + tokens.size())
  // True when this row's last logit gives the sequence's next token (decode rows, and the last
  // chunk of a prefill); false for a prefill chunk that is not the last one.
  bool sample = false;
};

struct ScheduledStep {
  std::vector<ScheduledSeq> seqs;
  std::vector<SeqId> preempted;  // sequences that gave their blocks back in this call (informational)
  int64_t num_tokens() const;
  bool empty() const { return seqs.empty(); }
};

struct SchedulerStats {
  int running = 0, waiting = 0;     // sequences
  int blocks_total = 0, blocks_used = 0;  // used = referenced by a live sequence (cached-free blocks are not used)
  int blocks_cached = 0;            // free blocks still holding a reusable prefix
  int64_t prefix_queries = 0;       // prompt tokens looked up in the prefix cache (full blocks)
  int64_t prefix_hits = 0;          // of those, tokens found (not computed)
  int64_t preemptions = 0;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  const SchedulerConfig& config() const { return config_; }

  // Queues a sequence. Errors (nothing queued): empty prompt, duplicate id, prompt + max_new_tokens
  // over max_model_len (the message names both numbers), max_new_tokens < 1, a prompt that could
  // never fit the whole cache.
  Status add(SeqId id, std::vector<int32_t> prompt, std::string adapter, int max_new_tokens);

  // The next step; empty when nothing can run. Sequences it names are "in flight" until complete()
  // is called for this step; call complete() before the next schedule().
  ScheduledStep schedule();

  // The step ran. `sampled[i]` is the token sampled for step.seqs[i] when it has sample = true (the
  // value of other entries is ignored). Appends each sampled token to its sequence and marks the
  // cached blocks that became full. A sequence reaching max_new_tokens generated tokens (or
  // max_model_len) finishes here and frees its blocks; returns those ids.
  std::vector<SeqId> complete(const ScheduledStep& step, const std::vector<int32_t>& sampled);

  // Ends a sequence now (stop token or string found by the caller, client gone, error): frees its
  // blocks at once, whether waiting, running or preempted. Unknown ids are ignored. Must not be
  // called for a sequence of a step between schedule() and complete() (finish it after complete()).
  void finish(SeqId id);

  bool has(SeqId id) const;
  bool idle() const;  // nothing waiting or running
  // Tokens generated so far by `id` (after the prompt), in order.
  const std::vector<int32_t>& generated(SeqId id) const;
  SchedulerStats stats() const;
  // Internal consistency, for tests: every block's reference count equals the number of block
  // tables holding it, a block held by several sequences is a full registered prefix block at the
  // same index in each, a running sequence's table covers exactly its computed (and in-flight)
  // tokens, the waiting queues agree with the sequences' states. An error names what is wrong.
  Status check_invariants() const;

 private:
  struct Impl;
  SchedulerConfig config_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nb::engine
