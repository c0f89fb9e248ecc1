#include "backends/cpu/gemm.h"

#include <algorithm>
#include <vector>

#include "backends/cpu/simd.h"
#include "core/status.h"
#include "core/thread_pool.h"

namespace nb::cpu {

namespace {

// MR rows of x against NR rows of w; 8 k per step, the last partial step masked.
template <int MR, int NR>
void micro(int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw, float* out, int64_t ldo,
           bool accumulate) {
  __m256 c[MR][NR];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < NR; ++n) c[m][n] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = _mm256_loadu_ps(x + m * ldx + k);
    for (int n = 0; n < NR; ++n) {
      const __m256 wv = _mm256_loadu_ps(w + n * ldw + k);
      for (int m = 0; m < MR; ++m) c[m][n] = _mm256_fmadd_ps(xv[m], wv, c[m][n]);
    }
  }
  if (k < K) {
    const __m256i mask = simd::tail_mask(static_cast<int>(K - k));
    __m256 xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = _mm256_maskload_ps(x + m * ldx + k, mask);
    for (int n = 0; n < NR; ++n) {
      const __m256 wv = _mm256_maskload_ps(w + n * ldw + k, mask);
      for (int m = 0; m < MR; ++m) c[m][n] = _mm256_fmadd_ps(xv[m], wv, c[m][n]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    float* o = out + m * ldo;
    if constexpr (NR == 4) {
      __m128 s = simd::hsum4(c[m][0], c[m][1], c[m][2], c[m][3]);
      if (accumulate) s = _mm_add_ps(s, _mm_loadu_ps(o));
      _mm_storeu_ps(o, s);
    } else {
      for (int n = 0; n < NR; ++n) o[n] = (accumulate ? o[n] : 0.f) + simd::hsum(c[m][n]);
    }
  }
}

using MicroFn = void (*)(int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool);

template <int MR>
MicroFn pick(int64_t nr) {
  switch (nr) {
    case 1: return micro<MR, 1>;
    case 2: return micro<MR, 2>;
    case 3: return micro<MR, 3>;
    default: return micro<MR, 4>;
  }
}

MicroFn pick(int64_t mr, int64_t nr) {
  if (mr >= 3) return pick<3>(nr);
  return mr == 2 ? pick<2>(nr) : pick<1>(nr);
}

}  // namespace

void gemm_f32_block(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, const float* w, int64_t ldw,
                    float* out, int64_t ldo, bool accumulate) {
  for (int64_t n = 0; n < N; n += 4) {
    const int64_t nr = std::min<int64_t>(4, N - n);
    for (int64_t m = 0; m < M; m += 3) {
      const int64_t mr = std::min<int64_t>(3, M - m);
      pick(mr, nr)(K, x + m * ldx, ldx, w + n * ldw, ldw, out + m * ldo + n, ldo, accumulate);
    }
  }
}

void gemm_panels(int64_t M, int64_t N, int64_t K, const float* x, int64_t ldx, float* out, int64_t ldo,
                 const float* bias, bool accumulate, const TileFn& tile) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  ThreadPool::global().parallel_for(panels, 1, [&](int64_t p0, int64_t p1) {
    thread_local std::vector<float> buf(static_cast<size_t>(kPanel * kKBlock));
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * kPanel, nt = std::min(kPanel, N - n0);
      for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
        const int64_t kb = std::min(kKBlock, K - k0);
        int64_t ldw = kKBlock;
        const float* w = tile(n0, nt, k0, kb, buf.data(), &ldw);
        for (int64_t m0 = 0; m0 < M; m0 += kMBlock) {
          gemm_f32_block(std::min(kMBlock, M - m0), nt, kb, x + m0 * ldx + k0, ldx, w, ldw, out + m0 * ldo + n0, ldo,
                         accumulate || k0 > 0);
        }
      }
      if (!bias) continue;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = n0; n < n0 + nt; ++n) out[m * ldo + n] += bias[n];
    }
  });
}

}  // namespace nb::cpu
