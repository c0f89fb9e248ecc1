// The engine as the command line and the tests use it: a ModelRunner (model, KV storage, adapters,
// the device) plus static batches over its own block manager — generate() (prefill each request,
// then decode all rows in lockstep), logits(), and step() over sequence ids. The server does not use
// this path: serve::EngineService drives a ModelRunner with the continuous-batching scheduler.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/block_manager.h"
#include "engine/model_runner.h"

namespace nb::engine {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int max_tokens = 16;
  ops::SamplingParams sampling;
  std::string adapter;             // "" = base model
  std::vector<int32_t> stop_ids;   // generation ends after emitting one of these
};

struct GenerationResult {
  std::vector<int32_t> tokens;
  std::string finish_reason;  // "length" | "stop"
};

struct GenerationStats {
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

// Called for every generated token: (request index, token id).
using TokenCallback = std::function<void(size_t, int32_t)>;

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> create(const EngineOptions& options);
  // Benchmarks: a model of `random`'s shapes with random weights instead of options.model_dir.
  static Result<std::unique_ptr<Engine>> create_random(const EngineOptions& options, const RandomWeights& random);
  ~Engine();

  ModelRunner& runner() { return *runner_; }
  const ModelConfig& config() const { return runner_->config(); }
  uint64_t linear_weight_bytes() const { return runner_->linear_weight_bytes(); }
  ops::Backend& backend() { return runner_->backend(); }
  const StartupStats& startup() const { return runner_->startup(); }
  void set_cuda_graphs(bool on) { runner_->set_cuda_graphs(on); }

  // Adapters: see ModelRunner.
  Status load_adapter(const std::string& name, const std::string& dir) { return runner_->load_adapter(name, dir); }
  Status unload_adapter(const std::string& name) { return runner_->unload_adapter(name); }
  std::vector<std::string> adapters() const { return runner_->adapters(); }
  const AdapterRegistry& adapter_registry() const { return runner_->adapter_registry(); }
  Result<AdapterSlots> acquire_adapter_slots(const std::vector<std::string>& names) {
    return runner_->acquire_adapter_slots(names);
  }

  // Generates for all requests together: each prompt is prefilled, then all rows decode as one
  // batch per step until each finishes.
  Result<std::vector<GenerationResult>> generate(const std::vector<GenerationRequest>& requests,
                                                 const TokenCallback& on_token = {},
                                                 GenerationStats* stats = nullptr);

  // F32 logits of `ids` under `adapter`: [ids.size(), vocab] when all_positions, else [1, vocab].
  Result<std::vector<float>> logits(const std::vector<int32_t>& ids, const std::string& adapter, bool all_positions);

  // One forward step over several sequences at once (exposed for tests of mixed batches):
  // each entry appends `tokens` to sequence `seq` and returns the logits of all its new rows.
  struct StepInput {
    int64_t seq = 0;
    std::vector<int32_t> tokens;
    std::string adapter;
    bool all_logits = false;  // else only the last row's
  };
  Result<std::vector<std::vector<float>>> step(const std::vector<StepInput>& inputs);
  void release_sequence(int64_t seq);
  // Free KV blocks of the static-batch path (tests: nothing leaks).
  int free_kv_blocks() const { return blocks_->free_blocks(); }

 private:
  Engine() = default;
  static Result<std::unique_ptr<Engine>> wrap(std::unique_ptr<ModelRunner> runner);
  // step() without the download: the logits stay on the device.
  Result<TensorView> step_device(const std::vector<StepInput>& inputs);

  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<ops::Backend> host_ops_;  // CPU ops for host-side work (sampling)
  std::unique_ptr<BlockManager> blocks_;
  std::map<int64_t, int64_t> seq_len_;  // tokens already in the cache per sequence
  int64_t next_seq_id_ = 1 << 20;
};

}  // namespace nb::engine
