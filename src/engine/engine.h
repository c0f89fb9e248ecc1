// The engine: one model on one backend, its KV cache, its adapters, and generation over batches in
// which every row may name a different adapter (or none).
#pragma once

#include <array>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "engine/block_manager.h"
#include "lora/registry.h"
#include "models/model.h"
#include "ops/device_buffer.h"

namespace nb::engine {

struct EngineOptions {
  std::string model_dir;
  std::string device = "cpu";     // cpu | cuda
  int max_loras = 8;              // adapter slots on the device: distinct adapters usable in one batch
  int max_cpu_loras = 0;          // adapters kept loaded in host memory (LRU); 0 = no limit, else >= max_loras
  int kv_block_size = 16;
  int64_t max_kv_tokens = 0;      // KV-cache capacity in tokens; 0 = enough for max_model_len * 8 sequences
  int max_model_len = 0;          // 0 = min(max_position_embeddings, 4096)
  int64_t max_batch_tokens = 2048;  // rows per forward call (longer prompts are split)
  bool reference_kernels = false; // CPU: run the scalar reference ops (slow, for checking)
  bool cuda_graphs = true;        // record decode steps as graphs where the backend can
  // > 0: size the KV cache to fill this fraction of the device memory (after weights and a reserve
  // for activations) instead of max_kv_tokens; the backend must report its memory.
  double gpu_memory_fraction = 0;
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

// The device slots one batch holds (Engine::acquire_adapter_slots). While held, no other batch can
// take those slots. release() (or destruction) gives them back; it must happen before the engine
// goes away. Move-only.
class AdapterSlots {
 public:
  AdapterSlots() = default;
  AdapterSlots(AdapterSlots&& o) noexcept { *this = std::move(o); }
  AdapterSlots& operator=(AdapterSlots&& o) noexcept;
  AdapterSlots(const AdapterSlots&) = delete;
  AdapterSlots& operator=(const AdapterSlots&) = delete;
  ~AdapterSlots() { release(); }

  // The slot of each name given to acquire_adapter_slots, in order; -1 for "" (base model).
  const std::vector<int>& slots() const { return slots_; }
  // The slot of `name`; -1 for "" and for names this batch did not acquire.
  int slot_of(const std::string& name) const;
  void release();

 private:
  friend class Engine;
  AdapterRegistry* registry_ = nullptr;
  std::vector<std::string> held_;  // distinct adapter names, each holding one slot reference
  std::vector<int> held_slots_;
  std::vector<int> slots_;
};

// What start-up cost and took (nibble bench prints it).
struct StartupStats {
  double create_seconds = 0;    // Engine::create, all of it
  double convert_seconds = 0;   // dummy models: uploading and converting the weights (not generating them)
  double generate_seconds = 0;  // dummy models: making the random weights on the host (stands in for reading)
  uint64_t weight_device_bytes = 0;  // device memory taken by the model (0 when the backend has none)
  int64_t kv_tokens = 0;
  uint64_t kv_bytes = 0;
};

class Engine {
 public:
  static Result<std::unique_ptr<Engine>> create(const EngineOptions& options);
  ~Engine();

  const ModelConfig& config() const { return model_->config(); }
  // Bytes of all Linear weights on the device (dummy models only; 0 otherwise).
  uint64_t linear_weight_bytes() const { return linear_bytes_; }
  ops::Backend& backend() { return *backend_; }
  const StartupStats& startup() const { return startup_; }
  // Turns the recording of decode steps as graphs on or off (benchmarks compare both).
  void set_cuda_graphs(bool on) {
    options_.cuda_graphs = on;
    graphs_.clear();
  }

  // Adapters live at three levels (lora/registry.h): registered by name; loaded in host memory, at
  // most max_cpu_loras (LRU; an evicted adapter is reloaded from its directory when used again); and
  // installed in one of max_loras device slots when a batch needs it.
  // load_adapter validates `dir` against the model's modules (errors name the tensor or setting that
  // does not fit) and keeps it in the CPU cache; when a slot is free it is installed there at once.
  Status load_adapter(const std::string& name, const std::string& dir);
  Status unload_adapter(const std::string& name);  // refused while a batch holds its slot
  std::vector<std::string> adapters() const;       // registered names, sorted
  const AdapterRegistry& adapter_registry() const { return *registry_; }

  // Device slots for one batch: `names` holds each row's (or sequence's) adapter, "" = base model,
  // repeats allowed. Reloads evicted adapters and installs the factors of every adapter that is not
  // already in its slot (model_->install_adapter). Call once before the forward; the slots stay
  // reserved for this batch until the result is released or destroyed (after the forward). Errors:
  // an unknown adapter; more distinct adapters than slots ("this batch uses 9 distinct adapters but
  // there are only 8 adapter slots (--max-loras 8)"); slots all held by other batches.
  Result<AdapterSlots> acquire_adapter_slots(const std::vector<std::string>& names);

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

  // ---- for a scheduler that owns the KV blocks (serve::EngineService) ----
  // Cache geometry: blocks of kv_block_size() tokens.
  int kv_blocks() const { return blocks_->num_blocks(); }
  int kv_block_size() const { return blocks_->block_size(); }
  int max_model_len() const { return options_.max_model_len; }
  // One row group of a step: `tokens` at positions [start, start + tokens.size()), its KV in the
  // blocks of `block_table` (which must cover them), with `adapter` ("" = base). Blocks handed to
  // run_rows must not also be used through step() (one owner of the cache).
  struct RowInput {
    const std::vector<int32_t>* tokens = nullptr;
    int64_t start = 0;
    const std::vector<int32_t>* block_table = nullptr;
    std::string adapter;
    bool logits = false;  // the last row's logits are wanted
  };
  // Runs one step; returns the F32 logits [inputs with logits, vocab] in backend memory (valid until
  // the next step), in input order (when no input wants logits: one row to ignore).
  Result<TensorView> run_rows(const std::vector<RowInput>& inputs);
  // Validates and registers an adapter without touching the device (thread-safe; the first batch
  // that uses it installs it in a slot). Errors as load_adapter, and a rank above max_rank (> 0).
  Status register_adapter(const std::string& name, const std::string& dir, int max_rank = 0);
  // An evicted adapter back into host memory in two halves (AdapterRegistry::read / restore): the
  // read from disk on any thread while steps run, the restore between steps. A step that needs an
  // adapter which is not resident reads it itself (and stalls).
  Result<LoraAdapter> read_adapter(const std::string& name) const { return registry_->read(name); }
  Status restore_adapter(const std::string& name, LoraAdapter adapter) {
    return registry_->restore(name, std::move(adapter));
  }

 private:
  Engine() = default;
  // Host-side description of one flat batch.
  struct BatchHost {
    std::vector<int32_t> ids, positions, slots, row_slot, query_start, context_lens, block_tables, logit_rows;
    int max_blocks = 0, max_query = 0, max_context = 0;
  };
  Status allocate_kv(int64_t tokens);
  // Appends one row group to a batch description (validates ids and the model length).
  Status add_rows(BatchHost& h, const std::vector<int32_t>& tokens, int64_t start,
                  const std::vector<int32_t>& block_table, int slot, bool all_logits, bool last_logit) const;
  // Runs one flat batch; returns its F32 logits [logit rows, vocab] in backend memory (valid until
  // the next step).
  Result<TensorView> run_forward(const BatchHost& h);
  // Closes the batch description (query starts, block tables padded to the longest) and runs it.
  Result<TensorView> run_batch(BatchHost& h, const std::vector<const std::vector<int32_t>*>& tables);
  // step() without the download: the logits stay on the device.
  Result<TensorView> step_device(const std::vector<StepInput>& inputs);
  // -1 for "" (base), the adapter's slot now (-1 when it has none), or an error naming the loaded
  // adapters when `adapter` is unknown.
  Result<int> slot_of(const std::string& adapter) const;

  EngineOptions options_;
  std::unique_ptr<ops::Backend> backend_;
  std::unique_ptr<ops::Backend> host_ops_;  // CPU ops for host-side work (sampling)
  std::unique_ptr<models::Model> model_;
  std::unique_ptr<BlockManager> blocks_;
  std::vector<ops::DeviceTensor> k_cache_, v_cache_;
  std::map<int64_t, int64_t> seq_len_;  // tokens already in the cache per sequence
  std::unique_ptr<AdapterRegistry> registry_;  // adapters: CPU cache and device slots
  int64_t next_seq_id_ = 1 << 20;
  // Per-step device state: the batch description, the LoRA shrink scratch, recorded decode steps.
  std::vector<int32_t> stage_;
  ops::DeviceBuffer step_buf_, lora_buf_;
  uint64_t epoch_ = 0;  // bumped when step_buf_ or lora_buf_ move
  struct RecordedStep {
    std::unique_ptr<ops::Graph> graph;
    TensorView logits;
  };
  std::map<std::pair<int64_t, bool>, RecordedStep> graphs_;  // by (rows, any adapter)
  std::array<uint64_t, 3> graph_epoch_ = {~0ull, ~0ull, ~0ull};
  uint64_t linear_bytes_ = 0;
  StartupStats startup_;
};

}  // namespace nb::engine
