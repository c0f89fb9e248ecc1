// The model runner: the only part of the engine that touches the device. One model on one backend,
// its KV-cache storage, its adapters (registry, device slots), and one forward step over rows whose
// KV blocks a caller owns (a scheduler, or Engine's static batches), staged into one device copy
// and recorded as a CUDA graph where it can be.
#pragma once

#include <array>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

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
};

// Benchmarks: a model of these shapes with random weights, instead of a checkpoint.
struct RandomWeights {
  ModelConfig config;
  nn::DummyWeights weights;
};

// The device slots one batch holds (ModelRunner::acquire_adapter_slots). While held, no other batch can
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
  friend class ModelRunner;
  AdapterRegistry* registry_ = nullptr;
  std::vector<std::string> held_;  // distinct adapter names, each holding one slot reference
  std::vector<int> held_slots_;
  std::vector<int> slots_;
};

// What start-up cost and took (nibble bench prints it).
struct StartupStats {
  double create_seconds = 0;    // ModelRunner::create, all of it
  double convert_seconds = 0;   // dummy models: uploading and converting the weights (not generating them)
  double generate_seconds = 0;  // dummy models: making the random weights on the host (stands in for reading)
  uint64_t weight_device_bytes = 0;  // device memory taken by the model (0 when the backend has none)
  int64_t kv_tokens = 0;
  uint64_t kv_bytes = 0;
};

class ModelRunner {
 public:
  // Loads options.model_dir (or makes `random` weights of its shapes, for benchmarks), sizes and
  // allocates the KV cache, creates the adapter registry.
  static Result<std::unique_ptr<ModelRunner>> create(const EngineOptions& options, const RandomWeights* random = nullptr);
  ~ModelRunner();

  const EngineOptions& options() const { return options_; }
  const ModelConfig& config() const { return model_->config(); }
  models::Model& model() { return *model_; }
  ops::Backend& backend() { return *backend_; }
  // Bytes of all Linear weights on the device (random-weight models only; 0 otherwise).
  uint64_t linear_weight_bytes() const { return linear_bytes_; }
  const StartupStats& startup() const { return startup_; }
  // Turns the recording of decode steps as graphs on or off (benchmarks compare both).
  void set_cuda_graphs(bool on) {
    options_.cuda_graphs = on;
    graphs_.clear();
  }
  // Cache geometry: kv_blocks() blocks of kv_block_size() tokens.
  int kv_blocks() const { return num_blocks_; }
  int kv_block_size() const { return options_.kv_block_size; }
  int max_model_len() const { return options_.max_model_len; }

  // Adapters live at three levels (lora/registry.h): registered by name; loaded in host memory, at
  // most max_cpu_loras (LRU; an evicted adapter is reloaded from its directory when used again); and
  // installed in one of max_loras device slots when a batch needs it.
  // load_adapter validates `dir` against the model's modules (errors name the tensor or setting that
  // does not fit) and keeps it in the CPU cache; when a slot is free it is installed there at once.
  Status load_adapter(const std::string& name, const std::string& dir);
  Status unload_adapter(const std::string& name);  // refused while a batch holds its slot
  std::vector<std::string> adapters() const;       // registered names, sorted
  const AdapterRegistry& adapter_registry() const { return *registry_; }
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
  // -1 for "" (base), the adapter's slot now (-1 when it has none), or an error naming the loaded
  // adapters when `adapter` is unknown.
  Result<int> slot_of(const std::string& adapter) const;

  // Device slots for one batch: `names` holds each row's (or sequence's) adapter, "" = base model,
  // repeats allowed. Reloads evicted adapters and installs the factors of every adapter that is not
  // already in its slot (model_->install_adapter). Call once before the forward; the slots stay
  // reserved for this batch until the result is released or destroyed (after the forward). Errors:
  // an unknown adapter; more distinct adapters than slots ("this batch uses 9 distinct adapters but
  // there are only 8 adapter slots (--max-loras 8)"); slots all held by other batches.
  Result<AdapterSlots> acquire_adapter_slots(const std::vector<std::string>& names);

  // One row group of a step: `tokens` at positions [start, start + tokens.size()), its KV in the
  // blocks of `block_table` (which must cover them), with `adapter` ("" = base).
  struct RowInput {
    const std::vector<int32_t>* tokens = nullptr;
    int64_t start = 0;
    const std::vector<int32_t>* block_table = nullptr;
    std::string adapter;
    bool logits = false;      // the last row's logits are wanted
    bool all_logits = false;  // every row's logits are wanted
  };
  // Runs one step; returns the F32 logits [wanted rows, vocab] in backend memory (valid until the
  // next step), in input order (when no row wants logits: one row to ignore).
  Result<TensorView> run_rows(const std::vector<RowInput>& inputs);

 private:
  ModelRunner() = default;
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

  EngineOptions options_;
  std::unique_ptr<ops::Backend> backend_;
  std::unique_ptr<models::Model> model_;
  int num_blocks_ = 0;
  std::vector<ops::DeviceTensor> k_cache_, v_cache_;
  std::unique_ptr<AdapterRegistry> registry_;  // adapters: CPU cache and device slots
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
