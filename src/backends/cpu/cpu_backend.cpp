#include "backends/cpu/cpu_backend.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "backends/cpu/fast_ops.h"
#include "backends/cpu/packed.h"
#include "backends/cpu/ref/ref_ops.h"

namespace nb {

namespace cpu {

namespace {

bool f32(const TensorView& t) { return t.dtype == DType::kF32; }

}  // namespace

void* CpuBackend::try_alloc(size_t bytes) {
  if (bytes > (size_t{1} << 62)) return nullptr;
  const size_t rounded = (bytes + 63) / 64 * 64;
  return std::aligned_alloc(64, rounded ? rounded : 64);
}

void* CpuBackend::alloc(size_t bytes) {
  void* p = try_alloc(bytes);
  NB_CHECK(p, "out of host memory: %.3f GiB requested", static_cast<double>(bytes) / 1073741824.0);
  return p;
}

void CpuBackend::dealloc(void* ptr) { std::free(ptr); }
void CpuBackend::upload(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void CpuBackend::download(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

Result<std::unique_ptr<ops::PackedWeight>> CpuBackend::pack_quantized(const ops::QuantWeightView& w) {
  return reference_ ? ref::pack_quantized(w) : pack_quantized_fast(w);
}

Result<std::unique_ptr<ops::PackedWeight>> CpuBackend::pack_dense(const TensorView& w) {
  return reference_ ? ref::pack_dense(w) : pack_dense_fast(w);
}

void CpuBackend::embedding(TensorView out, TensorView table, const int32_t* ids, int64_t num_tokens) {
  if (reference_ || !f32(out)) return ref::embedding(out, table, ids, num_tokens);
  fast::embedding(out, table, ids, num_tokens);
}

void CpuBackend::rms_norm(TensorView out, TensorView x, TensorView weight, float eps) {
  if (reference_ || !f32(out) || !f32(x)) return ref::rms_norm(out, x, weight, eps);
  fast::rms_norm(out, x, weight, eps);
}

void CpuBackend::add(TensorView out, TensorView a, TensorView b) {
  if (reference_ || !f32(out) || !f32(a) || !f32(b)) return ref::add(out, a, b);
  fast::add(out, a, b);
}

void CpuBackend::mul(TensorView out, TensorView a, TensorView b) {
  if (reference_ || !f32(out) || !f32(a) || !f32(b)) return ref::mul(out, a, b);
  fast::mul(out, a, b);
}

void CpuBackend::silu_mul(TensorView out, TensorView gate, TensorView up) {
  if (reference_ || !f32(out) || !f32(gate) || !f32(up)) return ref::silu_mul(out, gate, up);
  fast::silu_mul(out, gate, up);
}

void CpuBackend::rope(TensorView x, const int32_t* positions, const ops::RopeArgs& args) {
  if (reference_) return ref::rope(x, positions, args);
  fast::rope(x, positions, args);
}

void CpuBackend::linear(TensorView out, TensorView x, const ops::PackedWeight& w, const TensorView* bias) {
  // A weight packed by the other mode is computed by the code that understands its layout.
  const bool ref_weight = dynamic_cast<const ref::RefQuantWeight*>(&w) || dynamic_cast<const ref::RefDenseWeight*>(&w);
  if (reference_ || ref_weight || !f32(out) || !f32(x)) return ref::linear(out, x, w, bias);
  fast::linear(out, x, w, bias);
}

void CpuBackend::lora_shrink(TensorView tmp, TensorView x, const ops::LoraArgs& args) {
  if (reference_ || !f32(x)) return ref::lora_shrink(tmp, x, args);
  fast::lora_shrink(tmp, x, args);
}

void CpuBackend::lora_expand(TensorView y, TensorView tmp, const ops::LoraArgs& args) {
  if (reference_ || !f32(y) || !f32(tmp)) return ref::lora_expand(y, tmp, args);
  fast::lora_expand(y, tmp, args);
}

void CpuBackend::kv_store(TensorView k_cache, TensorView v_cache, TensorView k, TensorView v,
                          const int32_t* slot_mapping) {
  if (reference_) return ref::kv_store(k_cache, v_cache, k, v, slot_mapping);
  fast::kv_store(k_cache, v_cache, k, v, slot_mapping);
}

void CpuBackend::attention(TensorView out, TensorView q, TensorView k_cache, TensorView v_cache,
                           const ops::AttentionArgs& args) {
  if (reference_) return ref::attention(out, q, k_cache, v_cache, args);
  fast::attention(out, q, k_cache, v_cache, args);
}

void CpuBackend::sample(int32_t* out_ids, TensorView logits, const std::vector<ops::SamplingParams>& params,
                        uint64_t step) {
  if (reference_) return ref::sample(out_ids, logits, params, step);
  fast::sample(out_ids, logits, params, step);
}

void CpuBackend::cast(TensorView out, TensorView in) {
  if (reference_) return ref::cast(out, in);
  fast::cast(out, in);
}

}  // namespace cpu

std::unique_ptr<ops::Backend> make_cpu_backend(bool reference) { return std::make_unique<cpu::CpuBackend>(reference); }

}  // namespace nb
