// Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2; formats.md §7.3) over ops.h.
//
// The KV cache of a layer holds, per token, the RMS-normed latent c (kv_lora_rank) followed by the
// rotated rope key (qk_rope_head_dim): [slots, 1, kv_lora_rank + qk_rope_head_dim], not the
// expanded keys and values. This CPU path is the unabsorbed reference: every step expands the
// cached latents of each sequence's context through kv_b_proj (a Linear, so each sequence's adapter
// applies to it exactly as in prefill) into per-head keys [k_nope, k_rope] and values, and runs the
// ordinary attention op over them. (The CUDA path absorbs kv_b_proj into the query/output side.)
#pragma once

#include <string>
#include <vector>

#include "nn/blocks.h"

namespace nb::nn {

struct MlaSpec {
  int64_t hidden = 0;
  int num_heads = 0;
  int64_t q_lora_rank = 0;  // 0: plain q_proj (DeepSeek-V2-Lite)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  bool attention_bias = false;  // q_a_proj, kv_a_proj_with_mqa, o_proj carry a bias (q_proj, q_b_proj, kv_b_proj never)
  float rms_eps = 1e-6f;
  float softmax_scale = 0.f;  // qk_head_dim^-0.5 times the yarn mscale^2 correction, set by the architecture

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  int64_t latent_dim() const { return kv_lora_rank + qk_rope_head_dim; }  // cache row per token
};

// Per-step scratch sized by the batch's tokens T.
struct MlaScratch {
  TensorView q_a;     // [T, q_lora_rank]
  TensorView q;       // [T, heads * qk_head_dim]
  TensorView latent;  // [T, kv_lora_rank + qk_rope_head_dim]
  TensorView attn;    // [T, heads * v_head_dim]
};

// Scratch sized by the context rows N = sum of the batch's context lengths, shared by every MLA
// layer of one step (the gather indices and block tables are the same for all of them).
struct MlaContext {
  int64_t rows = 0;                    // N this step
  std::vector<int32_t> slots;          // [N] cache slot of each context row
  std::vector<int32_t> row_slot;       // [N] adapter slot of each context row (its sequence's)
  std::vector<int32_t> block_tables;   // [seqs, max_context]: identity tables over the expanded K/V
  int max_context = 0;
  std::vector<ops::DeviceBuffer> buffers;
  int64_t capacity = 0, lora_capacity = 0;
  TensorView latent, kv, k, v, lora;   // [N, latent], [N, H*(nope+v)], [N, H, qk], [N, H, v], F32 [N, rank]

  // Fills the indices from the batch (host-side arrays: CPU backend) and grows the buffers.
  void prepare(const BatchContext& ctx, ops::Backend& backend, const MlaSpec& spec);
};

class MlaAttention {
 public:
  MlaAttention() = default;
  MlaAttention(const std::string& prefix, const MlaSpec& spec);
  Status load(WeightLoader& loader);
  // out, x: [T, hidden]; cache: [slots, 1, latent_dim] of this layer.
  void forward(const BatchContext& ctx, const ops::RopeArgs& rope, TensorView out, TensorView x, TensorView cache,
               const MlaScratch& scratch, MlaContext& context) const;
  std::vector<Linear*> linears();
  const MlaSpec& spec() const { return spec_; }

 private:
  MlaSpec spec_;
  Linear q_proj_, q_a_proj_, q_b_proj_, kv_a_proj_, kv_b_proj_, o_proj_;
  RmsNorm q_a_norm_, kv_a_norm_;
};

}  // namespace nb::nn
