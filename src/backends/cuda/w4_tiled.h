// The tiled INT4 layout (w4_tiled.cu): packing and the W4A16 kernels that read it.
#pragma once

#include <cstdint>
#include <vector>

#include "backends/cuda/cuda_internal.h"

namespace nb::cuda {

// Whether p (planned by linear.cu: kp, groups, chunks_per_group, mma_ok) can take the tiled layout:
// INT4, every 64-column tile inside one group.
bool tiled_eligible(const CudaQuantWeight& p, const std::vector<int32_t>& chunk_group);
// Fills p's tiled fields from the chunked byte stream [out, kp / 2] (u = q + 8 nibbles; or, when
// `canonical`, the canonical stream with signed nibbles, which is the same layout for identity
// weights), F32 scales and offsets [out, G] (offset = 8 + z; empty when symmetric) and the chunk ->
// group map (empty = uniform groups).
void pack_tiled(CudaBackend& be, CudaQuantWeight& p, const uint8_t* chunked_codes, bool canonical,
                const std::vector<float>& scales, const std::vector<float>& offsets,
                const std::vector<int32_t>& chunk_group);
// out [rows, N] = x [rows, kp] (16-byte aligned rows, activation dtype) @ W^T (+ bias).
void tiled_gemm(CudaBackend& be, const DevRows& out, const void* x, int64_t ldx, int64_t rows,
                const CudaQuantWeight& w, const TensorView* bias);
// wd [N, kp] (activation dtype) = the dequantized weight, columns in packed order.
void tiled_dequantize(CudaBackend& be, void* wd, const CudaQuantWeight& w);

}  // namespace nb::cuda
