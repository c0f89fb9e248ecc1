// Fast paged attention: one work item per (query row, kv head), threaded; scores (four keys per step)
// and the weighted sum of values are vectorised over head_dim, the softmax in F32 with max subtraction.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backends/cpu/fast_ops.h"
#include "backends/cpu/ref/ref_ops.h"
#include "backends/cpu/simd.h"
#include "core/thread_pool.h"

namespace nb::cpu::fast {

namespace {

template <DType T>
constexpr size_t kElem = T == DType::kF32 ? 4 : 2;

template <DType T>
float dot(const float* q, const uint8_t* k, int64_t d) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= d; c += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), simd::load8<T>(k, c), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + c + 8), simd::load8<T>(k, c + 8), a1);
  }
  for (; c + 8 <= d; c += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), simd::load8<T>(k, c), a0);
  float s = simd::hsum(_mm256_add_ps(a0, a1));
  for (; c < d; ++c) s += q[c] * load_as_float(k, T, static_cast<size_t>(c));
  return s;
}

// p[j] = scale * q . K(slots[j]) for j < n; four keys per step share one transposed reduction.
template <DType T>
void scores(float* p, const float* q, const uint8_t* k_cache, const int64_t* slots, int64_t n, int64_t row_elems,
            int64_t head_off, int64_t d, float scale) {
  auto key = [&](int64_t j) { return k_cache + static_cast<size_t>(slots[j] * row_elems + head_off) * kElem<T>; };
  int64_t j = 0;
  if (d % 8 == 0) {
    const __m128 sc = _mm_set1_ps(scale);
    for (; j + 4 <= n; j += 4) {
      const uint8_t *k0 = key(j), *k1 = key(j + 1), *k2 = key(j + 2), *k3 = key(j + 3);
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t c = 0; c < d; c += 8) {
        const __m256 qv = _mm256_loadu_ps(q + c);
        a0 = _mm256_fmadd_ps(qv, simd::load8<T>(k0, c), a0);
        a1 = _mm256_fmadd_ps(qv, simd::load8<T>(k1, c), a1);
        a2 = _mm256_fmadd_ps(qv, simd::load8<T>(k2, c), a2);
        a3 = _mm256_fmadd_ps(qv, simd::load8<T>(k3, c), a3);
      }
      _mm_storeu_ps(p + j, _mm_mul_ps(simd::hsum4(a0, a1, a2, a3), sc));
    }
  }
  for (; j < n; ++j) p[j] = dot<T>(q, key(j), d) * scale;
}

// p[0..n) = exp(p - max) / sum, in place.
void softmax(float* p, int64_t n) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, p[j]);
  const __m256 m = _mm256_set1_ps(mx);
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = simd::exp(_mm256_sub_ps(_mm256_loadu_ps(p + j), m));
    _mm256_storeu_ps(p + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = simd::hsum(acc);
  for (; j < n; ++j) sum += (p[j] = std::exp(p[j] - mx));
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (j = 0; j + 8 <= n; j += 8) _mm256_storeu_ps(p + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), inv));
  for (; j < n; ++j) p[j] *= 1.0f / sum;
}

// out[0..8*V) = sum_j p[j] * V(slots[j])[c0 ..]: V accumulators kept in registers.
template <DType T, int V>
void weighted_block(float* out, const float* p, const int64_t* slots, int64_t n, const uint8_t* v, int64_t row_elems,
                    int64_t col0) {
  __m256 acc[V];
  for (int i = 0; i < V; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* vr = v + static_cast<size_t>(slots[j] * row_elems + col0) * kElem<T>;
    const __m256 pj = _mm256_set1_ps(p[j]);
    for (int i = 0; i < V; ++i) acc[i] = _mm256_fmadd_ps(pj, simd::load8<T>(vr, 8 * i), acc[i]);
  }
  for (int i = 0; i < V; ++i) _mm256_storeu_ps(out + 8 * i, acc[i]);
}

// out[0..dv) = sum_j p[j] * V(slots[j]); 64 columns (8 vectors) at a time, then the rest.
template <DType T>
void weighted_values(float* out, const float* p, const int64_t* slots, int64_t n, const uint8_t* v, int64_t row_elems,
                     int64_t head_off, int64_t dv) {
  using Block = void (*)(float*, const float*, const int64_t*, int64_t, const uint8_t*, int64_t, int64_t);
  static constexpr Block kBlocks[9] = {nullptr, weighted_block<T, 1>, weighted_block<T, 2>, weighted_block<T, 3>,
                                       weighted_block<T, 4>, weighted_block<T, 5>, weighted_block<T, 6>,
                                       weighted_block<T, 7>, weighted_block<T, 8>};
  int64_t c0 = 0;
  for (; c0 + 8 <= dv; c0 += 64) {
    const int64_t vecs = std::min<int64_t>(64, dv - c0) / 8;
    kBlocks[vecs](out + c0, p, slots, n, v, row_elems, head_off + c0);
  }
  for (int64_t c = dv / 8 * 8; c < dv; ++c) {  // columns past the last full vector
    float s = 0;
    for (int64_t j = 0; j < n; ++j) s += p[j] * load_as_float(v, T, static_cast<size_t>(slots[j] * row_elems + head_off + c));
    out[c] = s;
  }
}

// Cache slot of every key of every sequence, computed once per call (no division per key and head);
// key j of sequence s is at slots[offset[s] + j].
void key_slots(const ops::AttentionArgs& a, int64_t cache_rows, std::vector<int64_t>* slots, std::vector<int64_t>* offset) {
  for (int s = 0; s < a.num_seqs; ++s) {
    offset->push_back(static_cast<int64_t>(slots->size()));
    for (int64_t j = 0; j < a.context_lens[s]; j += a.block_size) {
      const int64_t base = static_cast<int64_t>(a.block_tables[static_cast<int64_t>(s) * a.max_blocks_per_seq + j / a.block_size]) * a.block_size;
      NB_CHECK(base >= 0 && base + a.block_size <= cache_rows, "attention: block of sequence %d outside the cache", s);
      for (int64_t o = 0; o < a.block_size && j + o < a.context_lens[s]; ++o) slots->push_back(base + o);
    }
  }
}

// One work item per (query row, kv head): the group's query heads share the keys' cache lines.
template <DType T>
void attention_t(TensorView out, TensorView q, TensorView k_cache, TensorView v_cache, const ops::AttentionArgs& a) {
  const int64_t rows = q.dim(0), heads = a.num_heads, d = a.head_dim, dv = a.v_head_dim;
  const int64_t kvh = a.num_kv_heads, group = heads / kvh;
  std::vector<int32_t> seq_of(static_cast<size_t>(rows));
  for (int s = 0; s < a.num_seqs; ++s)
    for (int32_t r = a.query_start[s]; r < a.query_start[s + 1]; ++r) seq_of[static_cast<size_t>(r)] = s;
  std::vector<int64_t> slots, offset;
  key_slots(a, k_cache.dim(0), &slots, &offset);
  const int64_t max_ctx = rows ? *std::max_element(a.context_lens, a.context_lens + a.num_seqs) : 0;
  const auto* kc = static_cast<const uint8_t*>(k_cache.data);
  const auto* vc = static_cast<const uint8_t*>(v_cache.data);
  ThreadPool::global().parallel_for(rows * kvh, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> p(static_cast<size_t>(max_ctx));
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t row = w / kvh, kh = w % kvh;
      const int s = seq_of[static_cast<size_t>(row)];
      const int64_t ql = a.query_start[s + 1] - a.query_start[s], ctx = a.context_lens[s];
      const int64_t pos = ctx - ql + (row - a.query_start[s]);
      const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, pos - a.sliding_window + 1) : 0, n = pos - lo + 1;
      const int64_t* sl = slots.data() + offset[static_cast<size_t>(s)] + lo;
      for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
        scores<T>(p.data(), q.as<float>() + (row * heads + h) * d, kc, sl, n, kvh * d, kh * d, d, a.scale);
        softmax(p.data(), n);
        weighted_values<T>(out.as<float>() + (row * heads + h) * dv, p.data(), sl, n, vc, kvh * dv, kh * dv, dv);
      }
    }
  });
}

}  // namespace

void attention(TensorView out, TensorView q, TensorView k_cache, TensorView v_cache, const ops::AttentionArgs& args) {
  ref::check_attention_args(out, q, k_cache, v_cache, args);
  const bool f32_io = q.dtype == DType::kF32 && out.dtype == DType::kF32 && k_cache.dtype == v_cache.dtype;
  if (f32_io && k_cache.dtype == DType::kF32) return attention_t<DType::kF32>(out, q, k_cache, v_cache, args);
  if (f32_io && k_cache.dtype == DType::kBF16) return attention_t<DType::kBF16>(out, q, k_cache, v_cache, args);
  if (f32_io && k_cache.dtype == DType::kF16) return attention_t<DType::kF16>(out, q, k_cache, v_cache, args);
  ref::attention(out, q, k_cache, v_cache, args);
}

}  // namespace nb::cpu::fast
