// The decoder-only transformer every architecture shares: embedding, N x (RMSNorm, attention,
// RMSNorm, MLP) with residuals, final RMSNorm, lm_head. Attention is GQA (Llama, Mistral, Qwen) or
// multi-head latent attention (DeepSeek-V3); each layer's MLP is a gated MLP or an MoE block
// (router + experts + optional shared expert). Architectures differ only in DecoderSpec, filled by
// their own file (models/<arch>.cpp).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/model.h"
#include "nn/blocks.h"
#include "nn/mla.h"
#include "nn/moe.h"

namespace nb::models {

struct DecoderSpec {
  int64_t vocab = 0, hidden = 0, intermediate = 0;  // intermediate: the dense MLP layers' width
  int num_layers = 0;
  nn::AttentionSpec attention;
  bool mla = false;      // multi-head latent attention instead of GQA
  nn::MlaSpec mla_spec;  // when mla
  nn::RopeConfig rope;
  float rms_eps = 1e-6f;
  bool tie_embeddings = false;
  bool mlp_bias = false;
  // MoE: moe_block(l) describes layer l's block, or returns nullopt for a dense MLP layer. Empty
  // function = a dense model.
  std::function<std::optional<nn::MoeSpec>(int layer)> moe_block;
};

class Decoder : public Model {
 public:
  Decoder(ModelConfig config, DecoderSpec spec);
  Status load(nn::WeightLoader& loader, bool verbose);

  const ModelConfig& config() const override { return config_; }
  KvSpec kv_spec() const override;
  std::vector<BaseModule> lora_modules() const override;
  std::vector<nn::Linear*> linears() override;
  Status install_adapter(int slot, const LoraAdapter& adapter) override;
  void remove_adapter(int slot) override;
  int max_lora_rank() const override;
  void reserve_lora_slots(int n, ops::Backend* backend) override;
  int64_t lora_rows(int64_t tokens) const override { return tokens * std::max(1, max_top_k_); }
  std::vector<LayerInfo> layer_info() const override;
  Status forward(const nn::BatchContext& ctx, const KvViews& kv, const std::vector<int32_t>& logit_rows,
                 float* logits) override;
  Result<TensorView> forward_device(const nn::BatchContext& ctx, const KvViews& kv) override;
  void reserve(int64_t tokens, int64_t rows) override { ensure_workspace(tokens, rows); }
  uint64_t workspace_epoch() const override { return ws_epoch_; }
  bool graph_safe(const int32_t* host_row_slot, int64_t rows) const override;

 private:
  struct Layer {
    nn::RmsNorm input_norm, post_norm;
    nn::Attention attention;            // GQA (spec.mla false)
    nn::MlaAttention mla;               // spec.mla true
    nn::GatedMlp mlp;                   // dense layers
    std::unique_ptr<nn::MoeBlock> moe;  // MoE layers
  };
  // Device memory of one installed adapter.
  struct SlotState {
    std::vector<ops::DeviceBuffer> buffers;          // LoRA factors
    ops::LoraFactors embed_lora;                      // on embed_tokens (a = A^T [vocab, r])
    DType embed_lora_dtype = DType::kF32;
    ops::DeviceTensor embed_replacement;              // modules_to_save embed_tokens
    std::unique_ptr<ops::PackedWeight> lm_head_replacement;  // modules_to_save lm_head
    bool used = false;
  };
  struct Workspace {
    int64_t tokens = 0, rows = 0;
    std::vector<ops::DeviceBuffer> buffers;
    TensorView h, x, tmp, q, k, v, attn, gate, up;  // [T, ...]
    TensorView g, logits, logits_alt, logits_f32, mask, inv_mask;  // [R, ...]
    nn::MoeScratch moe;   // MoE layers
    nn::MlaScratch mla;   // MLA layers
  };
  void ensure_workspace(int64_t tokens, int64_t rows);
  void embed(const nn::BatchContext& ctx);
  void apply_row_masked(const nn::BatchContext& ctx, TensorView dst, TensorView alt, int slot, int64_t rows,
                        const int32_t* host_row_slot);
  TensorView compute_logits(const nn::BatchContext& ctx);
  uint64_t ws_epoch_ = 0;

  ModelConfig config_;
  DecoderSpec spec_;
  ops::Backend* backend_ = nullptr;
  ops::DeviceTensor embed_;  // [vocab, hidden] as stored
  std::vector<Layer> layers_;
  nn::RmsNorm final_norm_;
  nn::Linear lm_head_;
  ops::DeviceTensor inv_freq_;
  ops::RopeArgs rope_;
  std::vector<nn::ExpertLinear*> expert_linears();
  std::map<std::string, std::pair<nn::Linear*, size_t>> sites_;  // HF module -> (Linear, slice)
  std::map<std::string, std::pair<nn::ExpertLinear*, int64_t>> expert_sites_;  // per-expert module -> (stack, expert)
  std::vector<SlotState> slots_;
  Workspace ws_;
  nn::MlaContext mla_context_;
  const nn::MoeSpec* moe_shape_ = nullptr;  // one MoE layer's spec (all MoE layers share their sizes)
  int max_top_k_ = 0;
};

}  // namespace nb::models
