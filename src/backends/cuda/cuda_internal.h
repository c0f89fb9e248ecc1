// Internals of the CUDA backend shared by its .cu files: error checks, the row view handed to
// kernels, the backend class and the launchers of each op family (one .cu per family).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "ops/ops.h"

// CUDA failures are programming or device errors: abort with file and line (design.md).
#define NB_CUDA_CHECK(expr)                                                                   \
  do {                                                                                        \
    cudaError_t nb_cuda_err_ = (expr);                                                        \
    NB_CHECK(nb_cuda_err_ == cudaSuccess, "CUDA error %d (%s) in %s", static_cast<int>(nb_cuda_err_), \
             cudaGetErrorString(nb_cuda_err_), #expr);                                        \
  } while (0)
#define NB_CUBLAS_CHECK(expr)                                                                 \
  do {                                                                                        \
    cublasStatus_t nb_cublas_st_ = (expr);                                                    \
    NB_CHECK(nb_cublas_st_ == CUBLAS_STATUS_SUCCESS, "cuBLAS status %d in %s",               \
             static_cast<int>(nb_cublas_st_), #expr);                                         \
  } while (0)
// After every launch: a bad configuration shows here, not three ops later.
#define NB_CUDA_LAUNCHED() NB_CUDA_CHECK(cudaGetLastError())

namespace nb::cuda {

// A tensor seen as [rows, cols] with a row stride ld (elements): 2-D views with strides {ld, 1}, or
// any contiguous tensor (rows = product of the leading dims). Passed to kernels by value.
struct DevRows {
  void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0, cols = 0, ld = 0;
};
DevRows dev_rows(const TensorView& t);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The kernel layout of a quantized weight (documented in linear.cu).
class CudaQuantWeight : public ops::PackedWeight {
 public:
  int64_t kp = 0;             // packed columns: every group padded to a multiple of 32
  int64_t groups = 0;         // G
  int64_t chunks_per_group = 0;  // when chunk_group is null: group of chunk c = c / chunks_per_group
  bool identity = true;       // packed column j == input column j (no gather of x needed)
  bool asym = false;
  bool mma_ok = false;        // INT4 with |offset| small enough for exact bf16/f16 dequantization
  void* codes = nullptr;      // [out, kp * bits / 8]
  float* scales = nullptr;    // [out, G]
  float* zeros = nullptr;     // [out, G] (8 + z for INT4, z for INT8; null when symmetric INT8)
  int32_t* chunk_group = nullptr;  // [kp / 32] or null
  int32_t* src_col = nullptr;      // [kp] input column of each packed column, -1 = padding; null = identity
  // The tiled layout (w4_tiled.cu): codes hold 512-byte tiles, scales/zeros above stay null.
  bool tiled = false;
  int64_t ktiles = 0;          // kp / 64
  int tiles_per_group = 1;     // when tile_group is null: group of k-tile t = t / tiles_per_group
  int tpg_shift = -1;          // log2(tiles_per_group) when a power of two
  uint32_t* tscales = nullptr; // [n-tiles][G][16] activation dtype, pairs (row j, row j + 8)
  uint32_t* toffs = nullptr;   // same layout, 128 + offset (bf16) / 1024 + offset (f16); null = symmetric
  int32_t* tile_group = nullptr;  // [ktiles] or null
  // tscales, toffs and tile_group live in the backend's weight arena (freed with the backend).
  ~CudaQuantWeight() override;
};

// A dense weight converted to the activation dtype, row-major [out, in] (cuBLAS reads it as is).
class CudaDenseWeight : public ops::PackedWeight {
 public:
  DType dtype = DType::kBF16;
  void* data = nullptr;
  ~CudaDenseWeight() override;
};

// How linear picks its kernel (the benchmark forces each path; the engine uses kAuto).
enum class LinearPath { kAuto, kGemv, kMma, kDequantGemm, kTiled };

class CudaBackend : public ops::Backend {
 public:
  CudaBackend(int device, DType activation);
  ~CudaBackend() override;

  Device device() const override { return Device::kCuda; }
  std::string name() const override { return "cuda"; }
  DType activation_dtype() const override { return act_; }

  void* alloc(size_t bytes) override;
  void* try_alloc(size_t bytes) override;
  void dealloc(void* ptr) override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  void synchronize() override;

  Result<std::unique_ptr<ops::PackedWeight>> pack_quantized(const ops::QuantWeightView& w) override;
  Result<std::unique_ptr<ops::PackedWeight>> pack_dense(const TensorView& w) override;

  void embedding(TensorView out, TensorView table, const int32_t* ids, int64_t num_tokens) override;
  void rms_norm(TensorView out, TensorView x, TensorView weight, float eps) override;
  void add(TensorView out, TensorView a, TensorView b) override;
  void mul(TensorView out, TensorView a, TensorView b) override;
  void silu_mul(TensorView out, TensorView gate, TensorView up) override;
  void rope(TensorView x, const int32_t* positions, const ops::RopeArgs& args) override;
  void linear(TensorView out, TensorView x, const ops::PackedWeight& w, const TensorView* bias) override;
  void lora_shrink(TensorView tmp, TensorView x, const ops::LoraArgs& args) override;
  void lora_expand(TensorView y, TensorView tmp, const ops::LoraArgs& args) override;
  void kv_store(TensorView k_cache, TensorView v_cache, TensorView k, TensorView v, const int32_t* slot_mapping) override;
  void attention(TensorView out, TensorView q, TensorView k_cache, TensorView v_cache,
                 const ops::AttentionArgs& args) override;
  void sample(int32_t* out_ids, TensorView logits, const std::vector<ops::SamplingParams>& params,
              uint64_t step) override;
  void cast(TensorView out, TensorView in) override;
  // MoE: not on the GPU yet (the CUDA MoE issue); packing refuses, so a model never gets here.
  Result<std::unique_ptr<ops::PackedWeight>> pack_quantized_experts(const ops::QuantWeightView& w,
                                                                    int64_t experts) override;
  Result<std::unique_ptr<ops::PackedWeight>> pack_dense_experts(const TensorView& w) override;
  void moe_route(TensorView weights, TensorView ids, TensorView logits, const ops::MoeRouteArgs& args) override;
  void moe_dispatch(int32_t* sorted_pairs, int32_t* expert_offsets, int32_t* pair_slots, const int32_t* ids,
                    const int32_t* row_slot, int64_t tokens, int top_k, int num_experts) override;
  void expert_linear(TensorView out, TensorView x, const ops::PackedWeight& w, const ops::ExpertRows& rows) override;
  void moe_combine(TensorView out, TensorView y, TensorView weights, const TensorView* shared,
                   const TensorView* shared_gate) override;

  bool supports_graphs() const override { return true; }
  void begin_capture() override;
  std::unique_ptr<ops::Graph> end_capture() override;
  uint64_t memory_epoch() const override { return epoch_; }
  void upload_async(void* dst, const void* src, size_t bytes) override;
  bool device_memory(size_t* free_bytes, size_t* total_bytes) const override;
  const std::string& device_name() const { return device_name_; }

  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  // A reusable device scratch buffer (index selects one of a few), grown on demand. Valid until the
  // next call with the same index; stream order makes reuse by the next op safe.
  void* scratch(int index, size_t bytes);
  // Memory for small per-weight arrays (scales, offsets, group maps), carved from 64 MiB slabs that
  // live as long as the backend: one cudaMalloc per weight array would round each up to the
  // allocation granularity (~1 GiB over a 32B model's ~900 arrays).
  void* arena_alloc(size_t bytes);
  void set_linear_path(LinearPath p) { linear_path_ = p; }
  LinearPath linear_path() const { return linear_path_; }

 private:
  int device_;
  DType act_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  LinearPath linear_path_ = LinearPath::kAuto;
  // Slots: 0-2 linear/sample, 3 pack_dense (load time), 4 decode attention partials, 5 prefill ones.
  static constexpr int kScratchSlots = 6;
  void* scratch_ptr_[kScratchSlots] = {};
  size_t scratch_bytes_[kScratchSlots] = {};
  uint64_t epoch_ = 0;
  std::vector<void*> arena_slabs_;
  void* arena_slab_ = nullptr;  // the slab small requests are carved from
  size_t arena_used_ = 0;
  std::string device_name_;
  static constexpr size_t kCublasWorkspace = size_t{32} << 20;
  void* cublas_workspace_ = nullptr;
  bool capturing_ = false;
};

// ---- launchers (stream first; outputs, inputs, sizes) -------------------------------------------
void launch_embedding(cudaStream_t s, const DevRows& out, const DevRows& table, const int32_t* ids, int64_t n);
void launch_rms_norm(cudaStream_t s, const DevRows& out, const DevRows& x, const void* w, DType w_dtype, float eps);
// op: 0 = add, 1 = mul, 2 = mul by a [rows, 1] column, 3 = silu(a) * b, 4 = copy/cast a
void launch_binary(cudaStream_t s, int op, const DevRows& out, const DevRows& a, const DevRows& b);
void launch_rope(cudaStream_t s, void* x, DType dtype, int64_t tokens, int64_t heads, int64_t stride_t,
                 int64_t stride_h, const int32_t* positions, const ops::RopeArgs& args);
void launch_kv_store(cudaStream_t s, const DevRows& kc, const DevRows& vc, const DevRows& k, const DevRows& v,
                     const int32_t* slot_mapping, int64_t tokens);
// Takes the backend for its stream and its scratch slots 4 and 5 (split-KV partials).
void launch_attention(CudaBackend& be, const TensorView& out, const TensorView& q, const TensorView& kc,
                      const TensorView& vc, const ops::AttentionArgs& a);
// Per-row argmax (lowest index among the maxima, NaN skipped, 0 when all NaN) into ids[rows] (device).
void launch_argmax(cudaStream_t s, int32_t* ids, const DevRows& logits);
void launch_add_bias(cudaStream_t s, const DevRows& out, const void* bias, DType bias_dtype);

}  // namespace nb::cuda
