// The scalar reference of every op in ops.h: plain loops, double accumulation, no SIMD, no threads.
// It is the oracle for the fast CPU kernels and for every later backend (tests/ops), and it runs the
// whole model when a backend is created with reference = true. Semantics follow Hugging Face
// transformers in F32; the comments of ops.h are the contract. Activations may be F32, BF16 or F16
// (read as float, stored rounded); the CPU backend uses F32.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backends/cpu/rows.h"
#include "ops/ops.h"

namespace nb::cpu::ref {

// The canonical plain weight, copied (the loader frees its buffers after packing).
class RefQuantWeight : public ops::PackedWeight {
 public:
  ops::QuantWeightView view;  // points into the owned arrays below
  std::vector<uint8_t> codes, scales;
  std::vector<int8_t> zeros;
  std::vector<int32_t> g_idx;
};

// A dense [out, in] weight kept in its dtype (BF16/F16/F32).
class RefDenseWeight : public ops::PackedWeight {
 public:
  DType dtype = DType::kF32;
  std::vector<uint8_t> data;
};

Result<std::unique_ptr<ops::PackedWeight>> pack_quantized(const ops::QuantWeightView& w);
Result<std::unique_ptr<ops::PackedWeight>> pack_dense(const TensorView& w);
// W[n][k] of a reference-packed weight (dequantized as ops::dequant_weight defines).
float weight_at(const ops::PackedWeight& w, int64_t n, int64_t k);

void embedding(TensorView out, TensorView table, const int32_t* ids, int64_t num_tokens);
void rms_norm(TensorView out, TensorView x, TensorView weight, float eps);
void add(TensorView out, TensorView a, TensorView b);
void mul(TensorView out, TensorView a, TensorView b);
void silu_mul(TensorView out, TensorView gate, TensorView up);
void rope(TensorView x, const int32_t* positions, const ops::RopeArgs& args);
void linear(TensorView out, TensorView x, const ops::PackedWeight& w, const TensorView* bias);
void lora_shrink(TensorView tmp, TensorView x, const ops::LoraArgs& args);
void lora_expand(TensorView y, TensorView tmp, const ops::LoraArgs& args);
void kv_store(TensorView k_cache, TensorView v_cache, TensorView k, TensorView v, const int32_t* slot_mapping);
void attention(TensorView out, TensorView q, TensorView k_cache, TensorView v_cache, const ops::AttentionArgs& args);
void sample(int32_t* out_ids, TensorView logits, const std::vector<ops::SamplingParams>& params, uint64_t step);
void cast(TensorView out, TensorView in);

// ---- mixture of experts (ref_moe.cpp) ----------------------------------------------------------

// A stack of E expert weights, each kept in the canonical plain layout (RefQuantWeight or
// RefDenseWeight of one expert's [out, in]); experts = E.
class RefExpertWeight : public ops::PackedWeight {
 public:
  std::vector<std::unique_ptr<ops::PackedWeight>> weights;  // [E]
};

Result<std::unique_ptr<ops::PackedWeight>> pack_quantized_experts(const ops::QuantWeightView& w, int64_t experts);
Result<std::unique_ptr<ops::PackedWeight>> pack_dense_experts(const TensorView& w);
void moe_route(TensorView weights, TensorView ids, TensorView logits, const ops::MoeRouteArgs& args);
void moe_dispatch(int32_t* sorted_pairs, int32_t* expert_offsets, int32_t* pair_slots, const int32_t* ids,
                  const int32_t* row_slot, int64_t tokens, int top_k, int num_experts);
void expert_linear(TensorView out, TensorView x, const ops::PackedWeight& w, const ops::ExpertRows& rows);
void moe_combine(TensorView out, TensorView y, TensorView weights, const TensorView* shared, const TensorView* shared_gate);

// ---- pieces shared with the fast path (same arithmetic, so both pick the same token) ------------

// cos/sin of position p for rotary pair i: float(p) * inv_freq[i] in F32, then cos/sin times
// attention_factor, as transformers computes them.
void rope_cos_sin(int32_t position, const ops::RopeArgs& args, float* cos_out, float* sin_out);

// Checks rope's x (F32 [T, heads, d], contiguous or strides {s0, s1, 1}) and rotary_dim; returns the
// token and head strides in elements.
void rope_strides(const TensorView& x, const ops::RopeArgs& args, int64_t* s0, int64_t* s1);

// One row of sampling. partial = true selects candidates with nth_element/partial_sort instead of a
// full sort; the chosen token is identical either way.
int32_t sample_row(const float* logits, int64_t vocab, const ops::SamplingParams& p, uint64_t step, bool partial);

// Checks the routing arguments (E, top_k, groups) and the shapes of weights [T, top_k] F32,
// ids [T, top_k] I32 and logits [T, E]; programming errors.
void check_moe_route_args(const TensorView& weights, const TensorView& ids, const TensorView& logits,
                          const ops::MoeRouteArgs& args);

// Routing of one token (formats.md §7.3): logits [E] as F32 -> weights [top_k], ids [top_k].
// Scores in F32 (softmax: max-subtracted exponentials summed in double; sigmoid: 1 / (1 + e^-x)
// rounded once), bias added in F32 for the choice, group scores = best + second best in F32,
// selections by descending score with ties to the lower index, renormalisation by the F32 sum of
// the chosen weights (summed in double, rounded once) plus renorm_eps, then times scaling. The fast
// path calls the same function, so both give the same ids and weights bit for bit.
void moe_route_row(const float* logits, const ops::MoeRouteArgs& args, float* weights, int32_t* ids);

// Checks expert_linear's tensors against the weight stack and the pair grouping (offsets ascending
// from 0 to P, every sorted pair in [0, P)); programming errors.
void check_expert_rows(const TensorView& out, const TensorView& x, const ops::PackedWeight& w, const ops::ExpertRows& rows);

// moe_combine's tensors as rows, checked (y [T * top_k, H], weights [T, top_k], shared [T, H],
// shared_gate [T, 1] only with shared); shared / gate are empty Rows when not given.
struct CombineRows {
  Rows out, y, weights, shared, gate;
};
CombineRows check_moe_combine_args(const TensorView& out, const TensorView& y, const TensorView& weights,
                                   const TensorView* shared, const TensorView* shared_gate);

// The x row of pair p.
inline int64_t expert_x_row(const ops::ExpertRows& rows, int64_t p) { return rows.x_by_token ? p / rows.top_k : p; }

// Physical cache row (slot) of key j of sequence s.
inline int64_t kv_slot(const ops::AttentionArgs& a, int s, int64_t j) {
  const int32_t block = a.block_tables[static_cast<int64_t>(s) * a.max_blocks_per_seq + j / a.block_size];
  return static_cast<int64_t>(block) * a.block_size + j % a.block_size;
}

// Checks the attention arguments against the tensors (shapes, GQA divisibility); programming errors.
void check_attention_args(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                          const TensorView& v_cache, const ops::AttentionArgs& a);

}  // namespace nb::cpu::ref
