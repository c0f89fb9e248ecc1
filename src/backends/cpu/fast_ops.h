// The fast CPU ops: AVX2/FMA/F16C kernels, threaded with ThreadPool::global(). Same contracts as
// ref/ref_ops.h; activations are F32 (CpuBackend falls back to the reference for anything else).
#pragma once

#include <cstdint>
#include <vector>

#include "ops/ops.h"

namespace nb::cpu::fast {

void linear(TensorView out, TensorView x, const ops::PackedWeight& w, const TensorView* bias);

// out[m][n] (+)= sum_k x[m][k] * W[n][k] (+ bias[n]) for a plain row-major W [N, K] with row stride
// ldw, dtype BF16/F16/F32. M = 1..4 streams W once (GEMV); larger M converts W tile by tile and runs
// a register-blocked micro-kernel over all rows. accumulate: add to out instead of overwriting.
void dense_matmul(float* out, int64_t ldo, const float* x, int64_t ldx, int64_t m, const void* w, DType dtype,
                  int64_t ldw, int64_t n, int64_t k, const float* bias, bool accumulate = false);

void lora_shrink(TensorView tmp, TensorView x, const ops::LoraArgs& args);
void lora_expand(TensorView y, TensorView tmp, const ops::LoraArgs& args);

void embedding(TensorView out, TensorView table, const int32_t* ids, int64_t num_tokens);
void rms_norm(TensorView out, TensorView x, TensorView weight, float eps);
void add(TensorView out, TensorView a, TensorView b);
void mul(TensorView out, TensorView a, TensorView b);
void silu_mul(TensorView out, TensorView gate, TensorView up);
void cast(TensorView out, TensorView in);
void rope(TensorView x, const int32_t* positions, const ops::RopeArgs& args);
void kv_store(TensorView k_cache, TensorView v_cache, TensorView k, TensorView v, const int32_t* slot_mapping);
void attention(TensorView out, TensorView q, TensorView k_cache, TensorView v_cache, const ops::AttentionArgs& args);
void sample(int32_t* out_ids, TensorView logits, const std::vector<ops::SamplingParams>& params, uint64_t step);

}  // namespace nb::cpu::fast
