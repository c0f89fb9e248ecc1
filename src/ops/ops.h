// The closed set of operations every backend implements (design.md: src/ops), and the backend
// interface: device memory, weight conversion ("load plain, convert after") and the op table.
//
// Conventions
// - Signatures read outputs, inputs, sizes (and, on CUDA, the backend's stream is implicit).
// - Activations are TensorViews on the backend's device. The CPU backend computes in F32; the CUDA
//   backend in BF16 or F16. Weights keep their stored dtype (BF16/F16/F32) unless packed.
// - 2-D activations may carry a row stride (strides = {ld, 1}); everything else is contiguous.
// - Shapes are given in comments as [rows, cols]; T = tokens in the batch, H = hidden size.
// - Index arrays (ids, positions, adapter slots, block tables) are int32 in the backend's memory.
// - The model code never calls a backend directly for matrix products: it goes through nn::Linear.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace nb::ops {

// The canonical plain quantized weight as handed to a backend (filled by nn from quant's
// QuantizedWeight; ops may not depend on quant). Host memory.
struct QuantWeightView {
  int64_t out = 0, in = 0;   // logical shape [out, in]
  int bits = 4;              // 4 or 8
  int64_t group_size = 0;    // columns per group (== in for channel-wise)
  int64_t num_groups = 0;    // G = ceil(in / group_size)
  const uint8_t* codes = nullptr;  // INT4: [out, ceil(in/2)] bytes, low nibble = even column, signed
                                   // two's-complement nibbles; INT8: [out, in] int8
  DType scale_dtype = DType::kBF16;
  const void* scales = nullptr;    // [out, G]
  const int8_t* zeros = nullptr;   // [out, G] signed, or null when symmetric
  const int32_t* g_idx = nullptr;  // [in] group of each input column, or null when contiguous
};

// Expert e of a stack of E quantized weights (Backend::pack_quantized_experts): every array of
// `stack` holds E blocks back to back (codes [E, out, ...], scales/zeros [E, out, G], g_idx [E, in]).
QuantWeightView expert_view(const QuantWeightView& stack, int64_t e);

// A weight in the backend's kernel layout. Keeps the logical shape and what it came from so that it
// can be described and reloaded. Created by Backend::pack_*; owned by nn::Linear.
class PackedWeight {
 public:
  virtual ~PackedWeight() = default;
  int64_t out = 0, in = 0;
  bool quantized = false;
  int bits = 16;
  int64_t group_size = 0;
  size_t device_bytes = 0;  // memory the packed form occupies on the device
  // 0: a plain Linear weight. E >= 1: a stack of E expert weights, each of logical shape [out, in]
  // (Backend::pack_*_experts), used only through Backend::expert_linear.
  int64_t experts = 0;
};

// One LoRA adapter's factors for one projection, in backend memory. A: [rank, in], B: [out, rank].
struct LoraFactors {
  const void* a = nullptr;
  const void* b = nullptr;
  int rank = 0;
  float scaling = 0.f;  // alpha/r or alpha/sqrt(r) (PEFT semantics, per module)
};

// The LoRA work of one projection for one batch: each row names an adapter slot or -1 (none).
// Adapters are never padded to a common rank; rows without an adapter cost nothing.
struct LoraArgs {
  const int32_t* row_slot = nullptr;   // [T] device memory: slot index per row, -1 = no adapter
  const int32_t* host_row_slot = nullptr;  // [T] the same indices in host memory (for planning)
  std::vector<LoraFactors> slots;      // host array indexed by slot; rank 0 = slot unused here
  DType dtype = DType::kF32;           // dtype of A and B
  int max_rank = 0;                    // largest rank among the slots (sizes the shrink buffer)
  // Optional: the same [slots.size()] entries in device memory, kept up to date by nn::Linear on
  // backends with their own memory (null on the CPU backend). With it, the CUDA backend runs
  // decode-sized batches (rows <= kLoraDecodeMaxRows) reading only row_slot and this table on the
  // device: no host planning, no allocation, no synchronization, launch grids fixed by (rows, K or
  // N, max_rank), so a captured CUDA graph stays valid while adapters are swapped in slots.
  const LoraFactors* device_slots = nullptr;
};
// Batches of at most this many rows take the device-table path above (decode steps).
inline constexpr int kLoraDecodeMaxRows = 64;

// Paged KV cache description for one attention call.
// k_cache/v_cache: [num_blocks * block_size, kv_heads, head_dim] (v: v_head_dim).
struct AttentionArgs {
  int num_seqs = 0;
  const int32_t* query_start = nullptr;   // [num_seqs + 1] row offsets of each sequence's queries
  const int32_t* context_lens = nullptr;  // [num_seqs] KV length including this step's tokens
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq] physical block ids
  int max_blocks_per_seq = 0;
  int block_size = 16;
  int num_heads = 0, num_kv_heads = 0;
  int head_dim = 0, v_head_dim = 0;
  float scale = 1.f;          // softmax scale (head_dim^-0.5 unless the model says otherwise)
  int sliding_window = 0;     // 0 = full causal attention
  int max_query_len = 0;      // host-side hints for kernel selection
  int max_context_len = 0;
};

// Rotary embedding parameters, computed once by nn from the config's rope scaling variant.
struct RopeArgs {
  const float* inv_freq = nullptr;  // [rotary_dim / 2] device memory
  int rotary_dim = 0;               // rotated leading dims of each head (<= head_dim)
  float attention_factor = 1.f;     // multiplies cos and sin (yarn)
  bool neox = true;                 // rotate_half style (Llama/Qwen); false = GPT-J interleaved pairs
};

// ---- mixture of experts (formats.md §7.3) ---------------------------------------------------------
// A token's router logits pick top_k of E experts with a weight each. The P = T * top_k (token,
// choice) pairs are numbered p = t * top_k + j; expert work is done per pair, grouped by expert.

enum class MoeScoring { kSoftmax, kSigmoid };

struct MoeRouteArgs {
  int num_experts = 0;
  int top_k = 0;
  MoeScoring scoring = MoeScoring::kSoftmax;  // softmax over all experts (Mixtral, Qwen) or sigmoid (DeepSeek)
  // Added to the scores for choosing experts only; the weights stay the unbiased scores
  // (DeepSeek-V3 e_score_correction_bias). [E] F32 in backend memory, or null.
  const float* correction_bias = nullptr;
  // Grouped selection (DeepSeek noaux_tc): experts form num_groups equal groups; a group's score is
  // the sum of its two best (biased) scores; only the topk_groups best groups may be chosen.
  int num_groups = 1, topk_groups = 1;
  bool renormalize = false;  // w /= (sum of the chosen w + renorm_eps): Mixtral always, else norm_topk_prob
  float renorm_eps = 0.f;    // DeepSeek-V3: 1e-20
  float scaling = 1.f;       // multiplies the final weights (routed_scaling_factor)
};

// Where each pair's rows are, grouped by expert (Backend::moe_dispatch fills it).
struct ExpertRows {
  int64_t pairs = 0;                        // P = T * top_k
  int top_k = 1;
  int num_experts = 0;
  const int32_t* sorted_pairs = nullptr;    // [P] pair indices, expert after expert
  const int32_t* expert_offsets = nullptr;  // [E + 1]: expert e owns sorted_pairs[offsets[e], offsets[e+1])
  bool x_by_token = false;                  // x row of pair p: p / top_k (x = the tokens) or p (x = per pair)
};

struct SamplingParams {
  float temperature = 0.f;  // 0 = greedy
  int top_k = 0;            // 0 = off
  float top_p = 1.f;        // 1 = off
  uint64_t seed = 0;
};

// A recorded sequence of ops (a CUDA graph) replayed with the same pointers and sizes; the values
// behind the pointers may change between replays.
class Graph {
 public:
  virtual ~Graph() = default;
  virtual void launch() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  virtual DType activation_dtype() const = 0;

  // ---- memory -------------------------------------------------------------------------------
  virtual void* alloc(size_t bytes) = 0;  // aborts (naming the sizes) when memory is exhausted
  // The same, but returns null when the memory is not there (callers that can refuse one request
  // and keep serving: DeviceBuffer::create).
  virtual void* try_alloc(size_t bytes) { return alloc(bytes); }
  virtual void dealloc(void* ptr) = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;    // host -> device
  virtual void download(void* dst, const void* src, size_t bytes) = 0;  // device -> host
  virtual void synchronize() = 0;

  // ---- weights: load plain, convert after ------------------------------------------------------
  virtual Result<std::unique_ptr<PackedWeight>> pack_quantized(const QuantWeightView& w) = 0;
  // w: [out, in] host, BF16/F16/F32.
  virtual Result<std::unique_ptr<PackedWeight>> pack_dense(const TensorView& w) = 0;

  // ---- ops ----------------------------------------------------------------------------------------
  // out: [T, H]; table: [V, H] host-layout dense weight already on the device; ids: [T].
  virtual void embedding(TensorView out, TensorView table, const int32_t* ids, int64_t num_tokens) = 0;
  // out, x: [rows, H]; weight: [H]. y = w * x / sqrt(mean(x^2) + eps), statistics in F32.
  virtual void rms_norm(TensorView out, TensorView x, TensorView weight, float eps) = 0;
  // out = a + b (same shape).
  virtual void add(TensorView out, TensorView a, TensorView b) = 0;
  // out = a * b elementwise, or a * b[row] when b is [rows, 1] (row-scalar, e.g. a sigmoid gate).
  virtual void mul(TensorView out, TensorView a, TensorView b) = 0;
  // out: [M, I] = silu(gate) * up; gate, up: [M, I] (may be column slices of one [M, 2I] buffer).
  virtual void silu_mul(TensorView out, TensorView gate, TensorView up) = 0;
  // x: [T, heads, head_dim] rotated in place at positions[T]; contiguous, or a 3-D view with strides
  // {s0, s1, 1} (the rope part of each head of MLA's q, the rope key of its latent).
  virtual void rope(TensorView x, const int32_t* positions, const RopeArgs& args) = 0;
  // out: [M, N] = x: [M, K] @ W^T (+ bias [N]); the one matrix product (quantized or dense).
  virtual void linear(TensorView out, TensorView x, const PackedWeight& w, const TensorView* bias) = 0;
  // LoRA shrink: tmp [M, max_rank] (F32) = x[m] @ A_slot(m)^T for rows with an adapter.
  virtual void lora_shrink(TensorView tmp, TensorView x, const LoraArgs& args) = 0;
  // LoRA expand: y [M, N] += scaling_slot(m) * tmp[m, :rank] @ B_slot(m)^T.
  virtual void lora_expand(TensorView y, TensorView tmp, const LoraArgs& args) = 0;
  // Writes this step's keys/values into the paged cache at slot_mapping[T] (= block * block_size + offset).
  virtual void kv_store(TensorView k_cache, TensorView v_cache, TensorView k, TensorView v,
                        const int32_t* slot_mapping) = 0;
  // out: [T, heads, v_head_dim]; q: [T, heads, head_dim]; causal over each sequence's context.
  virtual void attention(TensorView out, TensorView q, TensorView k_cache, TensorView v_cache,
                         const AttentionArgs& args) = 0;
  // Picks one token per row of logits [M, V] (F32 on the host after download, or on device).
  virtual void sample(int32_t* out_ids, TensorView logits, const std::vector<SamplingParams>& params,
                      uint64_t step) = 0;
  // Convert/copy between dtypes of the same shape (e.g. F32 logits for the sampler).
  virtual void cast(TensorView out, TensorView in) = 0;

  // ---- mixture of experts ---------------------------------------------------------------------------
  // A stack of E expert weights of one logical shape [out, in] (PackedWeight::experts = E).
  // w: E weights stacked as expert_view describes; w.out/w.in are one expert's shape.
  virtual Result<std::unique_ptr<PackedWeight>> pack_quantized_experts(const QuantWeightView& w, int64_t experts) = 0;
  // w: [E, out, in] host, BF16/F16/F32.
  virtual Result<std::unique_ptr<PackedWeight>> pack_dense_experts(const TensorView& w) = 0;
  // weights: [T, top_k] F32; ids: [T, top_k] I32; logits: [T, E] read as F32 (routing is F32
  // whatever the activation dtype). Chosen experts in descending order of their (biased) score,
  // ties to the lower expert index; groups likewise.
  virtual void moe_route(TensorView weights, TensorView ids, TensorView logits, const MoeRouteArgs& args) = 0;
  // Groups the pairs by expert. ids: [P] (moe_route's [T, top_k]); sorted_pairs: [P], ascending pair
  // index within each expert; expert_offsets: [E + 1]. pair_slots (optional): [P] LoRA slot of each
  // pair for ExpertLinear's slot tables, row_slot[p / top_k] * E + ids[p], or -1 where row_slot is -1
  // (row_slot: [T] or null = every pair -1).
  virtual void moe_dispatch(int32_t* sorted_pairs, int32_t* expert_offsets, int32_t* pair_slots, const int32_t* ids,
                            const int32_t* row_slot, int64_t tokens, int top_k, int num_experts) = 0;
  // out: [P, N], row p = x[row of p] @ W[expert of p]^T; w: a stack of E weights [N, K];
  // x: [T, K] (rows.x_by_token) or [P, K]. Experts with no pair cost nothing.
  virtual void expert_linear(TensorView out, TensorView x, const PackedWeight& w, const ExpertRows& rows) = 0;
  // out: [T, H] = sum over j of weights[t, j] * y[t * top_k + j] (j ascending, F32), plus shared[t]
  // when given, scaled by sigmoid(shared_gate[t]) when that is given too ([T, 1], e.g. Qwen2-MoE's
  // shared_expert_gate). y: [P, H]; weights: [T, top_k] F32; shared: [T, H].
  virtual void moe_combine(TensorView out, TensorView y, TensorView weights, const TensorView* shared,
                           const TensorView* shared_gate) = 0;

  // ---- recording (decode steps as CUDA graphs) ----------------------------------------------------
  // Ops issued between begin_capture and end_capture are recorded instead of run; they must not
  // allocate, transfer or synchronise. end_capture returns null when recording failed (the ops
  // then did not run either). Backends without graphs return false / null.
  virtual bool supports_graphs() const { return false; }
  virtual void begin_capture() {}
  virtual std::unique_ptr<Graph> end_capture() { return nullptr; }
  // Changes whenever a scratch buffer a recorded op may use is reallocated (recordings made
  // before then are stale).
  virtual uint64_t memory_epoch() const { return 0; }
  // Free and total bytes of device memory, where the backend has its own (false: host memory).
  virtual bool device_memory(size_t* free_bytes, size_t* total_bytes) const {
    (void)free_bytes;
    (void)total_bytes;
    return false;
  }
  // Asynchronous host -> device copy from host memory that stays valid until the next synchronize.
  virtual void upload_async(void* dst, const void* src, size_t bytes) { upload(dst, src, bytes); }
};

}  // namespace nb::ops
