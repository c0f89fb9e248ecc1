// Transformer building blocks over ops.h: RMSNorm, GQA attention with RoPE and a paged KV cache,
// the SiLU-gated MLP. Architectures are parameters (AttentionSpec), not copies.
#pragma once

#include <string>

#include "nn/context.h"
#include "nn/linear.h"
#include "nn/rope.h"
#include "nn/weight_loader.h"

namespace nb::nn {

class RmsNorm {
 public:
  RmsNorm() = default;
  RmsNorm(std::string name, int64_t dim, float eps) : name_(std::move(name)), dim_(dim), eps_(eps) {}
  Status load(WeightLoader& loader);
  // out, x: [rows, dim]
  void forward(const BatchContext& ctx, TensorView out, TensorView x) const;

 private:
  std::string name_;
  int64_t dim_ = 0;
  float eps_ = 1e-6f;
  ops::DeviceTensor weight_;
};

struct AttentionSpec {
  int64_t hidden = 0;
  int num_heads = 0, num_kv_heads = 0, head_dim = 0;
  bool qkv_bias = false;   // Qwen2 always; Llama/Mistral/Qwen3 when attention_bias
  bool o_bias = false;     // attention_bias (Llama)
  bool qk_norm = false;    // Qwen3: RMSNorm over head_dim on q and k before RoPE
  float rms_eps = 1e-6f;
  int sliding_window = 0;  // 0 = none
  float softmax_scale = 0.f;  // 0 = head_dim^-0.5
};

// Per-layer scratch for one batch (sized for T tokens by the model).
struct AttentionScratch {
  TensorView q, k, v, attn;  // [T, heads*D], [T, kv*D], [T, kv*D], [T, heads*D]
};

class Attention {
 public:
  Attention() = default;
  Attention(const std::string& prefix, const AttentionSpec& spec);
  Status load(WeightLoader& loader);
  // out, x: [T, hidden]; k_cache, v_cache: [slots, kv_heads, head_dim] of this layer.
  void forward(const BatchContext& ctx, const ops::RopeArgs& rope, TensorView out, TensorView x,
               TensorView k_cache, TensorView v_cache, const AttentionScratch& scratch) const;
  std::vector<Linear*> linears() { return {&q_, &k_, &v_, &o_}; }

 private:
  AttentionSpec spec_;
  Linear q_, k_, v_, o_;
  RmsNorm q_norm_, k_norm_;
};

struct MlpScratch {
  TensorView gate, up;  // [T, I]
};

class GatedMlp {
 public:
  GatedMlp() = default;
  // names: gate, up, down module names (Llama: mlp.gate_proj/up_proj/down_proj; Mixtral: w1/w3/w2).
  GatedMlp(const std::string& gate, const std::string& up, const std::string& down, int64_t hidden,
           int64_t intermediate, bool bias);
  Status load(WeightLoader& loader);
  // out, x: [T, hidden]
  void forward(const BatchContext& ctx, TensorView out, TensorView x, const MlpScratch& scratch) const;
  std::vector<Linear*> linears() { return {&gate_, &up_, &down_}; }
  int64_t intermediate() const { return intermediate_; }

 private:
  Linear gate_, up_, down_;
  int64_t intermediate_ = 0;
  bool bias_ = false;
};

// Rows [0, rows) of a contiguous [R, cols] tensor viewed as [rows, cols].
TensorView rows_view(TensorView t, int64_t rows);
// A contiguous tensor viewed with another shape of the same element count.
TensorView reshape(TensorView t, Shape shape);

}  // namespace nb::nn
