// A loaded model: hyper-parameters, weights on a backend, and a forward pass over one flat batch.
// Architectures register a factory by their Hugging Face `architectures` name (registry.cpp).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "lora/adapter.h"
#include "nn/context.h"
#include "nn/dummy_loader.h"
#include "nn/linear.h"
#include "ops/device_buffer.h"

namespace nb::models {

// KV-cache geometry the engine allocates for this model. Multi-head latent attention caches one
// "head" per token, the latent plus the rope key (kv_lora_rank + qk_rope_head_dim), and no values.
struct KvSpec {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;    // key head size
  int v_head_dim = 0;  // value head size (0: none)
  bool latent = false; // MLA: head_dim holds the compressed latent + rope key
  // Cache elements per token, all layers.
  int64_t elements_per_token() const { return int64_t{num_layers} * num_kv_heads * (head_dim + v_head_dim); }
};

// One decoder layer as `nibble inspect` and start-up describe it.
struct LayerInfo {
  std::string attention;  // "GQA 32/8 heads x 128" / "MLA ..."
  std::string mlp;        // "dense 14336" / "MoE 60 experts x 1408, top 4 + shared 5632 (gated)"
};

// Per-layer cache tensors: k[l], v[l] = [slots, kv_heads, head_dim].
struct KvViews {
  std::vector<TensorView> k, v;
};

struct LoadOptions {
  bool verbose = true;  // show progress while loading
};

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  virtual KvSpec kv_spec() const = 0;
  // Every module an adapter may target, with its logical shape (from the config, never from weights).
  virtual std::vector<BaseModule> lora_modules() const = 0;
  // Every Linear of the model (for installing adapter factors by module name).
  virtual std::vector<nn::Linear*> linears() = 0;
  // Puts an adapter's factors (and modules_to_save replacements) into adapter slot `slot`; rows of a
  // batch name slots. Fails, changing nothing, if the adapter does not fit this model.
  virtual Status install_adapter(int slot, const LoraAdapter& adapter) = 0;
  virtual void remove_adapter(int slot) = 0;
  // Largest LoRA rank installed anywhere (sizes the shrink scratch); 0 = none.
  virtual int max_lora_rank() const = 0;
  // Makes every LoRA site address adapter slots [0, n) (device slot tables allocated up front).
  virtual void reserve_lora_slots(int n, ops::Backend* backend) = 0;
  // Rows of the LoRA shrink scratch (BatchContext::lora_scratch) a batch of `tokens` rows needs:
  // MoE experts apply LoRA per (token, expert) pair.
  virtual int64_t lora_rows(int64_t tokens) const { return tokens; }
  virtual std::vector<LayerInfo> layer_info() const { return {}; }
  // Runs the batch; writes F32 logits [logit_rows.size(), vocab] to host memory `logits`.
  // logit_rows: batch rows (host indices) whose logits are wanted.
  virtual Status forward(const nn::BatchContext& ctx, const KvViews& kv, const std::vector<int32_t>& logit_rows,
                         float* logits) = 0;

  // The same pass without host transfers, for recorded (graph) decode steps: the wanted rows come
  // from ctx.logit_rows / num_logit_rows (+ logit_row_slot), the result is F32 logits
  // [num_logit_rows, vocab] in device memory, valid until the next forward. Allocates only when the
  // workspace must grow (call reserve first when recording).
  virtual Result<TensorView> forward_device(const nn::BatchContext& ctx, const KvViews& kv) = 0;
  // Sizes the workspace for batches of up to `tokens` rows and `rows` logit rows.
  virtual void reserve(int64_t tokens, int64_t rows) = 0;
  // Changes whenever the workspace is reallocated (recordings made before then are stale).
  virtual uint64_t workspace_epoch() const = 0;
  // Whether a step whose rows use these adapter slots may be recorded: the per-row adapter work
  // must then be driven by device memory alone.
  virtual bool graph_safe(const int32_t* host_row_slot, int64_t rows) const = 0;
};

// Reads config.json, picks the architecture, loads and converts every weight onto `backend`.
Result<std::unique_ptr<Model>> load_model(const std::string& model_dir, ops::Backend& backend,
                                          const LoadOptions& options = {});

// A model of `config`'s shapes with random weights (benchmarks). `linear_bytes` receives the bytes of
// all Linear weights as stored on the device.
// `convert_seconds` receives the time spent uploading and converting (not generating) the weights.
Result<std::unique_ptr<Model>> make_dummy_model(const ModelConfig& config, const nn::DummyWeights& weights,
                                                ops::Backend& backend, uint64_t* linear_bytes = nullptr,
                                                double* convert_seconds = nullptr, double* generate_seconds = nullptr);

}  // namespace nb::models
