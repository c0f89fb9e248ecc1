// Fast linear: quantized and dense weights, GEMV for M <= 4 and tiled GEMM above.
#include <algorithm>
#include <cstring>
#include <vector>

#include "backends/cpu/fast_ops.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/packed.h"
#include "backends/cpu/quant_kernels.h"
#include "backends/cpu/rows.h"
#include "core/thread_pool.h"

namespace nb::cpu::fast {

namespace {

// Up to this many rows of x share one pass over W (GEMV); more rows take the tiled GEMM. Measured
// from memory on a 256 MiB bf16 weight: GEMV wins up to M = 4, tiles at M = 8.
constexpr int64_t kMaxGemvRows = 4;

// ---- quantized ------------------------------------------------------------------------------------

// The groups [g0, g1) of the next K block: whole groups, at most `max_chunks` chunks (at least one group).
int64_t block_end(const CpuQuantWeight& w, int64_t g0, int64_t max_chunks) {
  int64_t g1 = g0 + 1;
  while (g1 < w.groups && w.group_chunk[static_cast<size_t>(g1 + 1)] - w.group_chunk[static_cast<size_t>(g0)] <= max_chunks) ++g1;
  return g1;
}

// out[m][n] for n in [n0, n1), m < M: dequantizes each chunk once for all M rows of x.
// M = 1 streams each row whole with four accumulators (one per chunk vector); the code stream is
// prefetched 2 KiB ahead as non-temporal so that x stays in L1 (eight accumulators over two chunks
// measured slower: register pressure; blocking K broke the sequential stream). M > 1 walks K in
// blocks whose slice of x fits 16 KiB of L1: four rows of x at K = 2048 fill L1 and the loop becomes
// bound by L2 bandwidth otherwise; two accumulators per row (four measured no faster).
template <class K, int M>
void quant_gemv(const CpuQuantWeight& w, const float* x, int64_t ldx, float* out, int64_t ldo, const float* bias,
                int64_t n0, int64_t n1) {
  constexpr int A = M == 1 ? 4 : 2;
  constexpr int64_t kPrefetchChunks = 2048 / K::kChunkBytes;
  const int64_t max_chunks = M == 1 ? w.kp : std::max<int64_t>(1, 16384 / (M * kChunk * 4));
  for (int64_t g0 = 0; g0 < w.groups;) {
    const int64_t g1 = M == 1 ? w.groups : block_end(w, g0, max_chunks);
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* codes = w.row(n);
      __m256 acc[M][A];
      for (int m = 0; m < M; ++m)
        for (int a = 0; a < A; ++a) acc[m][a] = _mm256_setzero_ps();
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t c0 = w.group_chunk[static_cast<size_t>(g)], c1 = w.group_chunk[static_cast<size_t>(g + 1)];
        if (c0 == c1) continue;
        const auto table = group_table<K>(w, n, g);
        for (int64_t c = c0; c < c1; ++c) {
          if ((c & (64 / K::kChunkBytes - 1)) == 0)  // once per 64-byte line (prefetches never fault)
            _mm_prefetch(reinterpret_cast<const char*>(codes + (c + kPrefetchChunks) * K::kChunkBytes), _MM_HINT_NTA);
          __m256 f[4];
          K::chunk(codes + c * K::kChunkBytes, table, f);
          for (int m = 0; m < M; ++m) {
            const float* xp = x + m * ldx + c * kChunk;
            for (int i = 0; i < 4; ++i) acc[m][i % A] = _mm256_fmadd_ps(f[i], _mm256_loadu_ps(xp + 8 * i), acc[m][i % A]);
          }
        }
      }
      for (int m = 0; m < M; ++m) {
        __m256 s = acc[m][0];
        for (int a = 1; a < A; ++a) s = _mm256_add_ps(s, acc[m][a]);
        float* o = out + m * ldo + n;
        *o = (g0 == 0 ? (bias ? bias[n] : 0.f) : *o) + simd::hsum(s);
      }
    }
    g0 = g1;
  }
}

// W[n0 .. n0+nt)[k0 .. k0+kb) dequantized into buf [nt, kKBlock]; k0 and kb are multiples of 32.
template <class K>
void quant_tile(const CpuQuantWeight& w, int64_t n0, int64_t nt, int64_t k0, int64_t kb, float* buf) {
  const int64_t c_begin = k0 / kChunk, c_end = (k0 + kb) / kChunk;
  for (int64_t r = 0; r < nt; ++r) {
    const int64_t n = n0 + r;
    const uint8_t* codes = w.row(n);
    int32_t group = -1;
    typename K::Table table{};
    for (int64_t c = c_begin; c < c_end; ++c) {
      if (w.chunk_group[static_cast<size_t>(c)] != group) {
        group = w.chunk_group[static_cast<size_t>(c)];
        table = group_table<K>(w, n, group);
      }
      __m256 f[4];
      K::chunk(codes + c * K::kChunkBytes, table, f);
      float* dst = buf + r * kKBlock + (c - c_begin) * kChunk;
      for (int i = 0; i < 4; ++i) _mm256_storeu_ps(dst + 8 * i, f[i]);
    }
  }
}

template <class K>
void quant_matmul(const CpuQuantWeight& w, const float* x, int64_t ldx, int64_t m_rows, float* out, int64_t ldo,
                  const float* bias) {
  if (m_rows <= kMaxGemvRows) {
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, w.row_bytes));
    ThreadPool::global().parallel_for(w.out, grain, [&](int64_t n0, int64_t n1) {
      switch (m_rows) {
        case 1: quant_gemv<K, 1>(w, x, ldx, out, ldo, bias, n0, n1); break;
        case 2: quant_gemv<K, 2>(w, x, ldx, out, ldo, bias, n0, n1); break;
        case 3: quant_gemv<K, 3>(w, x, ldx, out, ldo, bias, n0, n1); break;
        default: quant_gemv<K, 4>(w, x, ldx, out, ldo, bias, n0, n1); break;
      }
    });
    return;
  }
  gemm_panels(m_rows, w.out, w.kp, x, ldx, out, ldo, bias, false,
              [&](int64_t n0, int64_t nt, int64_t k0, int64_t kb, float* buf, int64_t* ldw) {
                quant_tile<K>(w, n0, nt, k0, kb, buf);
                *ldw = kKBlock;
                return static_cast<const float*>(buf);
              });
}

// x rows in the packed column order (groups contiguous, padding zero): [M, kp]. The identity plan
// uses x in place.
const float* pack_activations(const CpuQuantWeight& w, const Rows& xr, std::vector<float>& buf, int64_t* ldx) {
  if (w.identity()) {
    *ldx = xr.ld;
    return xr.row<float>(0);
  }
  buf.resize(static_cast<size_t>(xr.rows * w.kp));
  for (int64_t m = 0; m < xr.rows; ++m) {
    const float* src = xr.row<float>(m);
    float* dst = buf.data() + m * w.kp;
    for (int64_t j = 0; j < w.kp; ++j) {
      const int32_t c = w.src_col[static_cast<size_t>(j)];
      dst[j] = c < 0 ? 0.f : src[c];
    }
  }
  *ldx = w.kp;
  return buf.data();
}

void quant_linear(const CpuQuantWeight& w, const Rows& xr, const Rows& o, const float* bias) {
  thread_local std::vector<float> xbuf;
  int64_t ldx = 0;
  const float* x = pack_activations(w, xr, xbuf, &ldx);
  float* out = o.row<float>(0);
  switch (w.kernel) {
    case QuantKernel::kInt4Bf16: quant_matmul<Int4Bf16Kernel>(w, x, ldx, xr.rows, out, o.ld, bias); break;
    case QuantKernel::kInt4F16: quant_matmul<Int4F16Kernel>(w, x, ldx, xr.rows, out, o.ld, bias); break;
    case QuantKernel::kInt8:
      if (w.scale_dtype == DType::kBF16) {
        quant_matmul<Int8Kernel<DType::kBF16>>(w, x, ldx, xr.rows, out, o.ld, bias);
      } else if (w.scale_dtype == DType::kF16) {
        quant_matmul<Int8Kernel<DType::kF16>>(w, x, ldx, xr.rows, out, o.ld, bias);
      } else {
        quant_matmul<Int8Kernel<DType::kF32>>(w, x, ldx, xr.rows, out, o.ld, bias);
      }
      break;
  }
}

// ---- dense ------------------------------------------------------------------------------------------

template <DType T>
float load1(const void* base, int64_t i) {
  if constexpr (T == DType::kF32) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (T == DType::kBF16) {
    return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
  } else {
    return fp16_to_float(static_cast<const uint16_t*>(base)[i]);
  }
}

// M rows of x against rows [n0, n1) of W, streaming each row of W once (K is not blocked: from
// memory, row pieces cost more than x coming from L2). Four accumulators per row for M = 1, two above.
template <DType T, int M>
void dense_gemv(const void* w, int64_t ldw, int64_t k_dim, const float* x, int64_t ldx, float* out, int64_t ldo,
                const float* bias, bool accumulate, int64_t n0, int64_t n1) {
  constexpr int A = M == 1 ? 4 : 2;
  const size_t esize = T == DType::kF32 ? 4 : 2;
  for (int64_t n = n0; n < n1; ++n) {
    const void* wr = static_cast<const uint8_t*>(w) + static_cast<size_t>(n * ldw) * esize;
    __m256 acc[M][A];
    for (int m = 0; m < M; ++m)
      for (int a = 0; a < A; ++a) acc[m][a] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 * A <= k_dim; k += 8 * A) {
      for (int a = 0; a < A; ++a) {
        const __m256 wv = simd::load8<T>(wr, k + 8 * a);
        for (int m = 0; m < M; ++m) acc[m][a] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * ldx + k + 8 * a), acc[m][a]);
      }
    }
    for (; k + 8 <= k_dim; k += 8) {  // short rows (LoRA ranks) and the remainder
      const __m256 wv = simd::load8<T>(wr, k);
      for (int m = 0; m < M; ++m) acc[m][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * ldx + k), acc[m][0]);
    }
    for (int m = 0; m < M; ++m) {
      __m256 s = acc[m][0];
      for (int a = 1; a < A; ++a) s = _mm256_add_ps(s, acc[m][a]);
      float r = simd::hsum(s);
      for (int64_t kk = k; kk < k_dim; ++kk) r += load1<T>(wr, kk) * x[m * ldx + kk];
      float* o = out + m * ldo + n;
      *o = (accumulate ? *o : 0.f) + r + (bias ? bias[n] : 0.f);
    }
  }
}

template <DType T>
void dense_gemv_rows(const void* w, int64_t ldw, int64_t k_dim, const float* x, int64_t ldx, int64_t m_rows,
                     float* out, int64_t ldo, const float* bias, bool accumulate, int64_t n0, int64_t n1) {
  switch (m_rows) {
    case 1: dense_gemv<T, 1>(w, ldw, k_dim, x, ldx, out, ldo, bias, accumulate, n0, n1); break;
    case 2: dense_gemv<T, 2>(w, ldw, k_dim, x, ldx, out, ldo, bias, accumulate, n0, n1); break;
    case 3: dense_gemv<T, 3>(w, ldw, k_dim, x, ldx, out, ldo, bias, accumulate, n0, n1); break;
    default: dense_gemv<T, 4>(w, ldw, k_dim, x, ldx, out, ldo, bias, accumulate, n0, n1); break;
  }
}

// W[n0 .. n0+nt)[k0 .. k0+kb) widened to F32 (F32 weights are used in place).
template <DType T>
const float* dense_tile(const void* w, int64_t ldw, int64_t n0, int64_t nt, int64_t k0, int64_t kb, float* buf,
                        int64_t* ld_tile) {
  if constexpr (T == DType::kF32) {
    *ld_tile = ldw;
    return static_cast<const float*>(w) + n0 * ldw + k0;
  } else {
    for (int64_t r = 0; r < nt; ++r) {
      const int64_t base = (n0 + r) * ldw + k0;
      float* dst = buf + r * kKBlock;
      int64_t k = 0;
      for (; k + 8 <= kb; k += 8) _mm256_storeu_ps(dst + k, simd::load8<T>(w, base + k));
      for (; k < kb; ++k) dst[k] = load1<T>(w, base + k);
    }
    *ld_tile = kKBlock;
    return buf;
  }
}

template <DType T>
void dense_matmul_t(float* out, int64_t ldo, const float* x, int64_t ldx, int64_t m_rows, const void* w, int64_t ldw,
                    int64_t n, int64_t k, const float* bias, bool accumulate) {
  if (m_rows <= kMaxGemvRows) {
    const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, k));
    ThreadPool::global().parallel_for(n, grain, [&](int64_t n0, int64_t n1) {
      dense_gemv_rows<T>(w, ldw, k, x, ldx, m_rows, out, ldo, bias, accumulate, n0, n1);
    });
    return;
  }
  gemm_panels(m_rows, n, k, x, ldx, out, ldo, bias, accumulate,
              [&](int64_t n0, int64_t nt, int64_t k0, int64_t kb, float* buf, int64_t* ld_tile) {
                return dense_tile<T>(w, ldw, n0, nt, k0, kb, buf, ld_tile);
              });
}

// Bias [N] of any float dtype as F32.
const float* bias_f32(const TensorView* bias, int64_t n, std::vector<float>& buf) {
  if (!bias) return nullptr;
  NB_CHECK(bias->numel() == n, "linear: bias has %lld elements, expected %lld", static_cast<long long>(bias->numel()),
           static_cast<long long>(n));
  if (bias->dtype == DType::kF32) return bias->as<float>();
  buf.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) buf[static_cast<size_t>(i)] = load_as_float(bias->data, bias->dtype, static_cast<size_t>(i));
  return buf.data();
}

}  // namespace

void dense_matmul(float* out, int64_t ldo, const float* x, int64_t ldx, int64_t m, const void* w, DType dtype,
                  int64_t ldw, int64_t n, int64_t k, const float* bias, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  switch (dtype) {
    case DType::kF32: dense_matmul_t<DType::kF32>(out, ldo, x, ldx, m, w, ldw, n, k, bias, accumulate); break;
    case DType::kBF16: dense_matmul_t<DType::kBF16>(out, ldo, x, ldx, m, w, ldw, n, k, bias, accumulate); break;
    case DType::kF16: dense_matmul_t<DType::kF16>(out, ldo, x, ldx, m, w, ldw, n, k, bias, accumulate); break;
    default: NB_CHECK(false, "dense_matmul: weight dtype %s", dtype_name(dtype));
  }
}

void linear(TensorView out, TensorView x, const ops::PackedWeight& w, const TensorView* bias) {
  const Rows o = as_rows(out), xr = as_rows(x);
  NB_CHECK(xr.cols == w.in && o.cols == w.out && o.rows == xr.rows && o.dtype == DType::kF32 && xr.dtype == DType::kF32,
           "linear: out %s %s, x %s %s, weight [%lld, %lld]", dtype_name(out.dtype), shape_to_string(out.shape).c_str(),
           dtype_name(x.dtype), shape_to_string(x.shape).c_str(), static_cast<long long>(w.out),
           static_cast<long long>(w.in));
  if (xr.rows == 0) return;
  thread_local std::vector<float> bias_buf;
  const float* b = bias_f32(bias, w.out, bias_buf);
  if (auto* q = dynamic_cast<const CpuQuantWeight*>(&w)) {
    quant_linear(*q, xr, o, b);
    return;
  }
  auto* d = dynamic_cast<const CpuDenseWeight*>(&w);
  NB_CHECK(d != nullptr, "linear: the weight was not packed by the fast CPU backend");
  dense_matmul(o.row<float>(0), o.ld, xr.row<float>(0), xr.ld, xr.rows, d->data.data(), d->dtype, w.in, w.out, w.in, b);
}

}  // namespace nb::cpu::fast
