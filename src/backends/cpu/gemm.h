// F32 GEMM building blocks of the fast CPU backend: a register-blocked "dot form" micro-kernel
// (out[m][n] = sum_k x[m][k] * w[n][k], both operands k-contiguous, 3 rows x 4 columns in 12
// accumulators) and a threaded driver over panels of 16 output columns and K blocks, which asks a
// tile function for each [16, 512] block of W as F32 (dequantized or widened once, reused by all M).
#pragma once

#include <cstdint>
#include <functional>

namespace nb::cpu {

constexpr int64_t kPanel = 16;    // output columns per panel (one thread's unit of work)
constexpr int64_t kKBlock = 512;  // K per tile: a 16 x 512 F32 tile is 32 KiB (L1/L2)
constexpr int64_t kMBlock = 12;   // rows of x per pass over a tile (12 x 512 F32 = 24 KiB)

// out[m][n] (+)= sum_{k<K} x[m][k] * w[n][k] for m < M, n < N; any K (tails are masked).
void gemm_f32_block(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw,
                    float* out, int64_t ldo, bool accumulate);

// Returns W[n0 .. n0+nt)[k0 .. k0+kb) as F32 rows with stride *ldw: written into buf (room for
// kPanel x kKBlock floats) or pointing straight at F32 weights.
using TileFn = std::function<const float*(int64_t n0, int64_t nt, int64_t k0, int64_t kb, float* buf, int64_t* ldw)>;

// out[M, N] (+)= x[M, K] @ W^T (+ bias[N]), W supplied tile by tile; threaded over panels.
void gemm_panels(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, float* out, int64_t ldo,
                 const float* bias, bool accumulate, const TileFn& tile);

}  // namespace nb::cpu
