// The engine: one model on one backend, its KV cache, its adapters, and generation over batches in
// which every row may name a different adapter (or none).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "engine/block_manager.h"
#include "models/model.h"
#include "ops/device_buffer.h"

namespace nb::engine {

struct EngineOptions {
  std::string model_dir;
  std::string device = "cpu";     // cpu | cuda
  int max_loras = 8;              // adapter slots usable in one batch
  int kv_block_size = 16;
  int64_t max_kv_tokens = 0;      // KV-cache capacity in tokens; 0 = enough for max_model_len * 8 sequences
  int max_model_len = 0;          // 0 = min(max_position_embeddings, 4096)
  int64_t max_batch_tokens = 2048;  // rows per forward call (longer prompts are split)
  bool reference_kernels = false; // CPU: run the scalar reference ops (slow, for checking)
  bool verbose = true;
  // Benchmarks: a model of this config's shapes with random weights instead of model_dir.
  std::optional<ModelConfig> dummy_config;
  nn::DummyWeights dummy_weights;
};

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
  ~Engine();

  const ModelConfig& config() const { return model_->config(); }
  // Bytes of all Linear weights on the device (dummy models only; 0 otherwise).
  uint64_t linear_weight_bytes() const { return linear_bytes_; }
  ops::Backend& backend() { return *backend_; }

  // Loads a PEFT adapter under `name` and installs it into a free slot.
  Status load_adapter(const std::string& name, const std::string& dir);
  Status unload_adapter(const std::string& name);
  std::vector<std::string> adapters() const;

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

 private:
  Engine() = default;
  // Host-side description of one flat batch.
  struct BatchHost {
    std::vector<int32_t> ids, positions, slots, row_slot, query_start, context_lens, block_tables, logit_rows;
    int max_blocks = 0, max_query = 0, max_context = 0;
  };
  Status allocate_kv(int64_t tokens);
  Status run_forward(const BatchHost& h, float* logits);
  Result<int> slot_of(const std::string& adapter) const;

  EngineOptions options_;
  std::unique_ptr<ops::Backend> backend_;
  std::unique_ptr<ops::Backend> host_ops_;  // CPU ops for host-side work (sampling)
  std::unique_ptr<models::Model> model_;
  std::unique_ptr<BlockManager> blocks_;
  std::vector<ops::DeviceTensor> k_cache_, v_cache_;
  std::map<int64_t, int64_t> seq_len_;  // tokens already in the cache per sequence
  std::map<std::string, int> adapter_slots_;
  std::vector<std::unique_ptr<LoraAdapter>> slot_adapters_;  // by slot
  int64_t next_seq_id_ = 1 << 20;
  uint64_t linear_bytes_ = 0;
};

}  // namespace nb::engine
