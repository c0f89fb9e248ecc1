// The CPU backend: host memory, activations in F32. Fast mode runs the AVX2/FMA/F16C kernels
// (threaded over ThreadPool::global()); reference mode runs the scalar references of ref/ for every
// op, which higher-layer tests use to tell a kernel bug from a model bug. Ops given dtypes the fast
// kernels do not cover (e.g. BF16 activations) fall back to the reference.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ops/ops.h"

namespace nb {

namespace cpu {

class CpuBackend : public ops::Backend {
 public:
  explicit CpuBackend(bool reference) : reference_(reference) {}
  bool reference() const { return reference_; }

  Device device() const override { return Device::kCpu; }
  std::string name() const override { return reference_ ? "cpu-reference" : "cpu"; }
  DType activation_dtype() const override { return DType::kF32; }

  void* alloc(size_t bytes) override;
  void* try_alloc(size_t bytes) override;
  void dealloc(void* ptr) override;
  void upload(void* dst, const void* src, size_t bytes) override;
  void download(void* dst, const void* src, size_t bytes) override;
  void synchronize() override {}

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
  Result<std::unique_ptr<ops::PackedWeight>> pack_quantized_experts(const ops::QuantWeightView& w,
                                                                    int64_t experts) override;
  Result<std::unique_ptr<ops::PackedWeight>> pack_dense_experts(const TensorView& w) override;
  void moe_route(TensorView weights, TensorView ids, TensorView logits, const ops::MoeRouteArgs& args) override;
  void moe_dispatch(int32_t* sorted_pairs, int32_t* expert_offsets, int32_t* pair_slots, const int32_t* ids,
                    const int32_t* row_slot, int64_t tokens, int top_k, int num_experts) override;
  void expert_linear(TensorView out, TensorView x, const ops::PackedWeight& w, const ops::ExpertRows& rows) override;
  void moe_combine(TensorView out, TensorView y, TensorView weights, const TensorView* shared,
                   const TensorView* shared_gate) override;

 private:
  bool reference_;
};

}  // namespace cpu

// reference = true: every op runs the scalar reference (slow; the oracle).
std::unique_ptr<ops::Backend> make_cpu_backend(bool reference = false);

}  // namespace nb
