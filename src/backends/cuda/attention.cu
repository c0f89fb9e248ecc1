// Paged attention (decode and prefill, causal, GQA, sliding window) over the KV cache layout of
// ops.h: k_cache [slots, kv_heads, head_dim], v_cache [slots, kv_heads, v_head_dim], slot of key j of
// sequence s = block_tables[s][j / block_size] * block_size + j % block_size.
//
// First version, correctness first: one block of 4 warps per (query row, head). Each warp walks every
// 4th key with an online softmax (running max, normaliser and a V accumulator of v_head_dim / 32
// floats per lane); the 4 partial states are merged at the end. Scores and softmax in F32.
// Limits: head_dim <= 256 and v_head_dim <= 256.
#include <cmath>

#include "backends/cuda/cuda_common.cuh"

namespace nb::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kMaxDim = 256;
constexpr int kPerLane = kMaxDim / 32;

struct AttnParams {
  const int32_t* query_start;
  const int32_t* context_lens;
  const int32_t* block_tables;
  int num_seqs, max_blocks, block_size, heads, kv_heads, d, dv, window;
  float scale;
};

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(T* out, const T* q, const T* kc, const T* vc,
                                                               AttnParams p) {
  const int t = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // Sequence of query row t: the last s with query_start[s] <= t.
  int lo_s = 0, hi_s = p.num_seqs - 1;
  while (lo_s < hi_s) {
    const int mid = (lo_s + hi_s + 1) / 2;
    if (p.query_start[mid] <= t) lo_s = mid; else hi_s = mid - 1;
  }
  const int s = lo_s;
  const int ql = p.query_start[s + 1] - p.query_start[s], ctx = p.context_lens[s];
  const int pos = ctx - ql + (t - p.query_start[s]);
  const int lo = p.window > 0 ? max(0, pos - p.window + 1) : 0;
  const int kh = h / (p.heads / p.kv_heads);

  __shared__ float qs[kMaxDim];
  for (int c = threadIdx.x; c < p.d; c += blockDim.x) qs[c] = to_f(q[(static_cast<int64_t>(t) * p.heads + h) * p.d + c]);
  __syncthreads();

  float m = -INFINITY, l = 0.f, acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) acc[i] = 0.f;
  const int32_t* table = p.block_tables + static_cast<int64_t>(s) * p.max_blocks;
  for (int j = lo + warp; j <= pos; j += kWarps) {
    const int64_t slot = static_cast<int64_t>(table[j / p.block_size]) * p.block_size + j % p.block_size;
    const T* krow = kc + (slot * p.kv_heads + kh) * p.d;
    float dot = 0.f;
    for (int c = lane; c < p.d; c += 32) dot += qs[c] * to_f(krow[c]);
    const float score = warp_sum(dot) * p.scale;
    const float m_new = fmaxf(m, score);
    const float corr = m == -INFINITY ? 0.f : expf(m - m_new);
    const float e = expf(score - m_new);
    l = l * corr + e;
    const T* vrow = vc + (slot * p.kv_heads + kh) * p.dv;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int c = lane + 32 * i;
      acc[i] = acc[i] * corr + (c < p.dv ? e * to_f(vrow[c]) : 0.f);
    }
    m = m_new;
  }
  // Merge the warps' states: out = sum_w acc_w * exp(m_w - M) / sum_w l_w * exp(m_w - M).
  __shared__ float ms[kWarps], ls[kWarps], accs[kWarps][kMaxDim];
  if (lane == 0) { ms[warp] = m; ls[warp] = l; }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) accs[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, ms[w]);
  float denom = 0.f;
  for (int w = 0; w < kWarps; ++w) denom += ms[w] == -INFINITY ? 0.f : ls[w] * expf(ms[w] - mx);
  for (int c = threadIdx.x; c < p.dv; c += blockDim.x) {
    float num = 0.f;
    for (int w = 0; w < kWarps; ++w) num += ms[w] == -INFINITY ? 0.f : accs[w][c] * expf(ms[w] - mx);
    out[(static_cast<int64_t>(t) * p.heads + h) * p.dv + c] = from_f<T>(num / denom);
  }
}

}  // namespace

void launch_attention(cudaStream_t s, const TensorView& out, const TensorView& q, const TensorView& kc,
                      const TensorView& vc, const ops::AttentionArgs& a) {
  NB_CHECK(q.rank() == 3 && out.rank() == 3 && kc.rank() == 3 && vc.rank() == 3 && q.is_contiguous() &&
               out.is_contiguous() && kc.is_contiguous() && vc.is_contiguous(),
           "attention: q %s, out %s and the caches must be contiguous", shape_to_string(q.shape).c_str(),
           shape_to_string(out.shape).c_str());
  NB_CHECK(q.dim(1) == a.num_heads && q.dim(2) == a.head_dim && out.dim(0) == q.dim(0) && out.dim(1) == a.num_heads &&
               out.dim(2) == a.v_head_dim && kc.dim(1) == a.num_kv_heads && kc.dim(2) == a.head_dim &&
               vc.dim(1) == a.num_kv_heads && vc.dim(2) == a.v_head_dim,
           "attention: q %s, out %s, caches %s %s, args heads %d/%d dims %d/%d", shape_to_string(q.shape).c_str(),
           shape_to_string(out.shape).c_str(), shape_to_string(kc.shape).c_str(), shape_to_string(vc.shape).c_str(),
           a.num_heads, a.num_kv_heads, a.head_dim, a.v_head_dim);
  NB_CHECK(a.num_kv_heads > 0 && a.num_heads % a.num_kv_heads == 0 && a.block_size > 0 && a.num_seqs > 0,
           "attention: %d heads over %d kv heads, block size %d, %d sequences", a.num_heads, a.num_kv_heads,
           a.block_size, a.num_seqs);
  NB_CHECK(a.head_dim <= kMaxDim && a.v_head_dim <= kMaxDim, "attention: head dims %d/%d exceed %d", a.head_dim,
           a.v_head_dim, kMaxDim);
  NB_CHECK(q.dtype == out.dtype && q.dtype == kc.dtype && q.dtype == vc.dtype &&
               (q.dtype == DType::kBF16 || q.dtype == DType::kF16),
           "attention: q, out and the caches must share one BF16/F16 dtype");
  if (q.dim(0) == 0) return;
  AttnParams p{a.query_start, a.context_lens, a.block_tables, a.num_seqs, a.max_blocks_per_seq, a.block_size,
               a.num_heads, a.num_kv_heads, a.head_dim, a.v_head_dim, a.sliding_window, a.scale};
  const dim3 grid(static_cast<unsigned>(q.dim(0)), static_cast<unsigned>(a.num_heads));
  if (q.dtype == DType::kBF16) {
    attention_kernel<__nv_bfloat16><<<grid, kWarps * 32, 0, s>>>(
        out.as<__nv_bfloat16>(), q.as<const __nv_bfloat16>(), kc.as<const __nv_bfloat16>(),
        vc.as<const __nv_bfloat16>(), p);
  } else {
    attention_kernel<__half><<<grid, kWarps * 32, 0, s>>>(out.as<__half>(), q.as<const __half>(),
                                                          kc.as<const __half>(), vc.as<const __half>(), p);
  }
  NB_CUDA_LAUNCHED();
}

}  // namespace nb::cuda
