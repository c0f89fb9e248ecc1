// What the HTTP server asks of the engine: submit token requests that stream their tokens back,
// cancel them, manage adapters at run time, and report state for /metrics and /v1/models.
// The server (src/serve/http_*) sees only this interface; serve::EngineService implements it over
// the engine (a loop thread driving the scheduler and the model runner), and tests may fake it.
//
// Threads: every method may be called from any thread. Observers are called on the engine's
// thread: they must return quickly (queue the tokens for the HTTP thread) and must not call back
// into the Service.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace nb::serve {

struct SamplingOptions {
  float temperature = 1.f;  // 0 = greedy
  float top_p = 1.f;        // 1 = off
  int top_k = 0;            // 0 = off
  float min_p = 0.f;        // 0 = off: drop tokens with p < min_p * p(best)
  std::optional<uint64_t> seed;  // absent: a seed drawn by the engine (results not reproducible)
  float presence_penalty = 0.f, frequency_penalty = 0.f;  // OpenAI semantics, over generated tokens
  int logprobs = -1;        // -1: none; k >= 0: the chosen token's log-probability and the k best
};

struct GenerateRequest {
  std::vector<int32_t> prompt;    // token ids (the server tokenizes and renders chat templates)
  std::string adapter;            // "" = base model, else a loaded adapter's name
  int max_tokens = 16;            // >= 1
  SamplingOptions sampling;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these (the server passes EOS here)
};

struct TokenOut {
  int32_t id = 0;
  float logprob = 0.f;                          // log-softmax of the raw logits (with logprobs >= 0)
  std::vector<std::pair<int32_t, float>> top;   // the `logprobs` best (id, log-probability), best first
};

class RequestObserver {
 public:
  virtual ~RequestObserver() = default;
  // New tokens of the request, in order (usually one per step).
  virtual void on_tokens(const std::vector<TokenOut>& tokens) = 0;
  // Called exactly once, last. finish_reason: "stop" (a stop id was emitted), "length" (max_tokens
  // or the model length), "abort" (cancelled), "error" (`error` says why; the request failed alone).
  virtual void on_finish(const std::string& finish_reason, const std::string& error) = 0;
};

struct AdapterInfo {
  std::string name;
  std::string path;
  std::string residency;  // "gpu" (in a device slot), "cpu" (in host memory), "disk" (evicted)
  bool pinned = false;
  int64_t requests = 0;         // requests submitted with it
  int64_t generated_tokens = 0;
  int64_t loads = 0, evictions = 0;  // reads from disk (first load and reloads), evictions from host memory
};

struct ServiceStats {
  int running = 0, waiting = 0;  // sequences
  int kv_blocks_total = 0, kv_blocks_used = 0;
  int64_t prefix_cache_queries = 0, prefix_cache_hits = 0;  // tokens
  int64_t preemptions = 0;
  int64_t prompt_tokens = 0, generated_tokens = 0;  // totals since start
  std::vector<AdapterInfo> adapters;
};

struct ModelInfo {
  std::string model_dir;
  std::string architecture;
  int64_t vocab_size = 0;
  int max_model_len = 0;
  int64_t kv_tokens = 0;      // KV-cache capacity in tokens
  int max_concurrency = 0;    // sequences of max_model_len that fit the cache at once
  int max_loras = 0;          // adapters usable in one step
  std::string device;         // "cpu" / "cuda"
};

class Service {
 public:
  virtual ~Service() = default;
  virtual ModelInfo model_info() const = 0;

  // Queues a request; tokens and the finish go to `observer`. Errors (nothing queued, the observer
  // is not called): unknown adapter (kNotFound), prompt + max_tokens over the model length or other
  // invalid parameters (kInvalidArgument / kOutOfRange, naming the numbers), shutting down.
  virtual Result<uint64_t> submit(GenerateRequest request, std::shared_ptr<RequestObserver> observer) = 0;
  // Ends a request early (client gone, stop string found): its KV blocks are freed at once and its
  // observer gets on_finish("abort"). Unknown or finished ids are ignored.
  virtual void cancel(uint64_t id) = 0;

  // Validates the adapter in `dir` in full against the model, then makes it visible as `name`.
  // Errors: duplicate name, invalid adapter (the loader's message).
  virtual Status load_adapter(const std::string& name, const std::string& dir) = 0;
  // Makes `name` invisible to new requests; requests already using it finish first, then its memory
  // is freed. Error: unknown name.
  virtual Status unload_adapter(const std::string& name) = 0;
  virtual std::vector<AdapterInfo> adapters() const = 0;

  virtual ServiceStats stats() const = 0;

  // Stops accepting requests, lets every queued and running request finish, then stops the engine
  // thread. Idempotent.
  virtual void drain() = 0;
};

}  // namespace nb::serve
