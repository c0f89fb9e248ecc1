// Mixture of experts over ops.h: ExpertLinear (the one door for expert projections, design.md rule
// 3) and the MoE block (router + routed experts + optional shared expert) that Mixtral, Qwen2-MoE,
// Qwen3-MoE and DeepSeek-V3 share. Architectures are parameters (MoeSpec), not copies.
//
// Per step, for T tokens choosing top_k of E experts, the P = T * top_k (token, choice) pairs are
// numbered p = t * top_k + j (ops.h): the router writes F32 logits [T, E], moe_route picks ids and
// weights [T, top_k], moe_dispatch groups the pairs by expert, the expert projections run per pair
// (gate, up: [P, I]; down: [P, H]) and moe_combine sums each token's pairs (plus the shared expert).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/blocks.h"

namespace nb::nn {

// Per-pair LoRA inputs of one expert projection (null pair_slots: no adapter in the batch).
struct ExpertLoraRows {
  const int32_t* pair_slots = nullptr;       // [P] slot * E + expert, or -1
  const int32_t* host_pair_slots = nullptr;  // the same in host memory, where the backend has one
  TensorView x_pairs;                        // [P, in]: the shrink input of each pair
  TensorView scratch;                        // F32, at least P * max_rank elements
};

// Where a transformers-5 checkpoint keeps one projection of all experts: rows [offset, offset + out)
// of dimension 1 of the 3-D tensor `tensor` [E, rows, in] (gate: rows [0, I) of gate_up_proj).
struct FusedExpertSource {
  std::string tensor;  // "model.layers.1.mlp.experts.gate_up_proj"; "" = none
  int64_t offset = 0;
  int64_t rows = 0;
};

// E expert weights of one logical shape [out, in] in one packed stack, and their LoRA site indexed
// by (adapter slot, expert) = slot * E + e. Loaded from per-expert 2-D modules
// `expert_prefix + e + "." + name` (any checkpoint format) or from a fused 3-D tensor.
class ExpertLinear {
 public:
  ExpertLinear() = default;
  ExpertLinear(std::string expert_prefix, std::string name, int64_t experts, int64_t out, int64_t in,
               FusedExpertSource fused = {});

  Status set_weight(std::unique_ptr<ops::PackedWeight> weight);
  // out: [P, out]; x: [T, in] (rows.x_by_token) or [P, in].
  void forward(ops::Backend& backend, TensorView out, TensorView x, const ops::ExpertRows& rows,
               const ExpertLoraRows& lora) const;

  // "model.layers.1.mlp.experts.3.gate_proj"
  std::string expert_module(int64_t e) const { return prefix_ + std::to_string(e) + "." + name_; }
  const std::string& name() const { return name_; }
  const std::string& prefix() const { return prefix_; }
  std::string description() const { return prefix_ + "*." + name_; }
  int64_t experts() const { return experts_; }
  int64_t out_features() const { return out_; }
  int64_t in_features() const { return in_; }
  const FusedExpertSource& fused() const { return fused_; }
  const ops::PackedWeight* weight() const { return weight_.get(); }

  // LoRA of expert `expert` for adapter slot `slot` (rank 0 clears it).
  void set_lora(int slot, int64_t expert, const ops::LoraFactors& factors, DType dtype);
  void clear_lora(int slot);
  void reserve_lora_slots(int n, ops::Backend* backend);
  int max_lora_rank() const { return lora_.max_rank(); }
  bool has_lora() const { return lora_.max_rank() > 0; }
  bool lora_device_driven() const { return lora_.device_driven(); }

 private:
  std::string prefix_, name_;
  int64_t experts_ = 0, out_ = 0, in_ = 0;
  FusedExpertSource fused_;
  std::unique_ptr<ops::PackedWeight> weight_;
  LoraSite lora_;
  ops::Backend* lora_backend_ = nullptr;
};

struct MoeSpec {
  int64_t hidden = 0;
  int64_t intermediate = 0;         // per routed expert (moe_intermediate_size)
  int64_t shared_intermediate = 0;  // shared expert MLP width; 0 = no shared expert
  int num_experts = 0, top_k = 0;
  ops::MoeRouteArgs route;          // scoring, groups, renormalisation, scaling (correction_bias set at load)
  bool correction_bias = false;     // DeepSeek: <router>.e_score_correction_bias [E]
  bool shared_gate = false;         // Qwen2-MoE: sigmoid(shared_expert_gate(x)) scales the shared expert
  // Hugging Face names of one layer's block (checkpoint tensors and LoRA modules).
  std::string router;                      // "model.layers.1.mlp.gate" (Mixtral: "...block_sparse_moe.gate")
  // Another name of the router (Mixtral's transformers-5 "model.layers.1.mlp.gate"): read when the
  // checkpoint has no `router`, and accepted as a LoRA module name.
  std::string router_alias;
  std::string expert_prefix;               // "model.layers.1.mlp.experts." (Mixtral: "...block_sparse_moe.experts.")
  std::string gate_name = "gate_proj", up_name = "up_proj", down_name = "down_proj";  // Mixtral: w1, w3, w2
  // transformers-5 module holding the fused 3-D parameters gate_up_proj [E, 2I, H] and down_proj
  // [E, H, I] (Mixtral too uses "...mlp.experts" there); PEFT's target_parameters address them.
  std::string fused_module;                // "model.layers.1.mlp.experts"
  std::string shared_prefix;               // "model.layers.1.mlp.shared_expert" (DeepSeek: shared_experts)
  std::string shared_gate_module;          // "model.layers.1.mlp.shared_expert_gate"
};

struct MoeScratch {
  TensorView logits;       // [T, E] F32
  TensorView weights;      // [T, top_k] F32
  TensorView ids;          // [T, top_k] I32
  TensorView sorted;       // [P] I32
  TensorView offsets;      // [E + 1] I32
  TensorView pair_slots;   // [P] I32
  TensorView pair_tokens;  // [P] I32: p / top_k, filled once
  TensorView x_pairs;      // [P, H] (only with adapters on gate/up)
  TensorView gate, up;     // [P, I]
  TensorView down;         // [P, H]
  TensorView shared_gate;  // [T, 1]
  TensorView shared_out;   // [T, H]
  MlpScratch shared;       // [T, shared_intermediate]
};

class MoeBlock {
 public:
  MoeBlock() = default;
  explicit MoeBlock(MoeSpec spec);
  Status load(WeightLoader& loader);
  // out, x: [T, hidden]. ctx.lora_scratch must hold T * top_k rows of the largest rank.
  void forward(const BatchContext& ctx, TensorView out, TensorView x, const MoeScratch& scratch) const;

  const MoeSpec& spec() const { return spec_; }
  std::vector<Linear*> linears();                  // router, shared expert MLP, shared gate
  Linear& router() { return router_; }
  std::vector<ExpertLinear*> expert_linears() { return {&gate_, &up_, &down_}; }
  bool has_shared() const { return spec_.shared_intermediate > 0; }

 private:
  MoeSpec spec_;
  Linear router_;
  ops::DeviceTensor correction_bias_;  // [E] F32
  ExpertLinear gate_, up_, down_;
  GatedMlp shared_;
  Linear shared_gate_;
};

}  // namespace nb::nn
