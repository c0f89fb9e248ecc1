// Paged attention (decode and prefill, causal, GQA, sliding window) over the KV cache layout of
// ops.h: k_cache [slots, kv_heads, head_dim], v_cache [slots, kv_heads, v_head_dim], slot of key j of
// sequence s = block_tables[s][j / block_size] * block_size + j % block_size.
//
// Dispatch (launch_attention, at the bottom)
//   flash path: BF16/F16, head_dim == v_head_dim in {64, 80, 96, 128}, q/out/caches 16-byte aligned,
//               num_seqs <= 65535. Two shapes of one tensor-core kernel (flash_kernel):
//     decode  (max_query_len <= 4): 16-row tiles, the 4 warps of a block split each 64-key tile
//               (flash-decoding inside the block), and the grid splits the keys again (splits).
//     prefill (max_query_len > 4):  64-row tiles, 4 warps x 16 rows, every warp walks all keys.
//     With splits > 1 every block writes a partial (max, sum, unnormalised output) per row to a
//     scratch buffer owned by the backend and merge_kernel combines them; with splits == 1 the
//     kernel writes the normalised output itself.
//   fallback:   everything else (head_dim > 128 or not in the list, v_head_dim != head_dim,
//               misaligned views): attention_kernel, one block of 4 warps per (query row, head).
//               The environment variable NIBBLE_CUDA_ATTENTION=fallback forces it (tests, A/B timing).
//
// Row packing (both shapes): the rows of a tile are the (query, head) pairs of ONE kv head of one
// sequence, packed as row = query_index * group + head_in_group (group = heads / kv_heads). So every
// K/V row loaded into shared memory serves all query heads of its GQA group, and a decode step of a
// Llama-3 shape (group 4) puts 4 rows into a 16-row tile. A row's keys: [lo, pos] with
// pos = ctx - query_len + query_index and lo = pos - window + 1 (clamped at 0) under a sliding window.
//
// flash_kernel<T, D, WM, WK, BN, STAGES>: block = WM * WK warps, BM = 16 * WM rows, grid
//   x = row_tiles * splits (heavier causal tiles first), y = kv head, z = sequence.
//   - K/V tiles of BN = 64 keys are gathered through the block table with 16-byte cp.async into a
//     STAGES-deep (2) ring in shared memory (row stride D + 8 halves: conflict-free ldmatrix); keys
//     outside the block's range are zero-filled (never read from the cache). Q goes through the
//     last ring stage into registers (A fragments) once, before the loop overwrites that stage.
//   - S = Q K^T and O += P V with mma.sync m16n8k16 (bf16 or f16 inputs, F32 accumulation); softmax
//     online in F32 in the log2 domain (scale * log2 e folded in), P rounded to T for the P V product.
//   - Masking (causal, window, split bounds) only on tiles that need it, per element with a select.
//   - WK > 1 (decode): warps merge their (m, l, O) through shared memory at the end.
//   Shared memory: STAGES * 2 * BN * (D + 8) * sizeof(T) = 68 KiB for D = 128 (3 blocks per H100 SM).
//   Registers (ptxas, sm_90, D = 128, no spills): decode 168 (3 blocks/SM), prefill 233 (2 blocks/SM).
//
// Splits (host): decode targets 8 blocks per SM (floor(8 * SMs / (row tiles * kv heads * seqs)),
// at most ceil(max_context_len / 64), at most 256); prefill splits only when the row tiles do not
// fill the SMs once (ceil(2 * SMs / blocks), at most ceil(max_context_len / 256)).
// max_query_len is a hint for the shape: 0 (unset) is read as "up to every row".
//
// Splits and CUDA graphs: the grid and the scratch size depend only on host values that stay fixed
// for a captured shape (num_seqs, q rows, heads, dims, max_query_len, max_context_len, SM count).
// The number of splits is chosen on the host; each block derives its key range on the device from
// context_lens (chunk = ceil(keys / splits) rounded up to BN), and blocks whose range is empty only
// mark their rows empty (max = -inf) and exit. max_context_len may be an upper bound: it only caps
// the number of splits. The decode scratch request is additionally raised to a bound that does not
// depend on num_seqs (16 rows * target blocks), so every decode batch size asks for the same bytes
// and the buffer is never reallocated between a capture and its replay, as long as the first
// (uncaptured) warm-up call has happened. Decode uses scratch slot 4, prefill slot 5.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "backends/cuda/cuda_common.cuh"
#include "backends/cuda/mma.cuh"

namespace nb::cuda {

namespace {

// ================================ fallback: one block per (query row, head) ==========================
// One block of 4 warps per (query row, head). Each warp walks every 4th key with an online softmax
// (running max, normaliser and a V accumulator of v_head_dim / 32 floats per lane); the 4 partial
// states are merged at the end. Scores and softmax in F32. Limits: head_dim, v_head_dim <= 256.

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

// ================================ flash path: tensor-core tiles ======================================

constexpr int kMaxSplits = 256;  // partials per row (merge_kernel keeps their weights in shared memory)
constexpr float kLog2e = 1.4426950408889634f;

struct FlashParams {
  const int32_t* query_start;
  const int32_t* context_lens;
  const int32_t* block_tables;
  int max_blocks, block_size, bs_shift;  // bs_shift = log2(block_size), or -1 when not a power of two
  int heads, kv_heads, group, window;
  float scale_log2;                      // softmax scale * log2(e)
  int row_tiles, splits;
  float* part_acc;   // [T * heads * splits, D] unnormalised outputs (splits > 1)
  float2* part_ml;   // [T * heads * splits] (max in the log2 domain, sum)
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; when !valid the destination is zero-filled and src is not read.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ int64_t kv_slot(const int32_t* table, int j, int bs, int bs_shift) {
  if (bs_shift >= 0) return (static_cast<int64_t>(table[j >> bs_shift]) << bs_shift) | (j & (bs - 1));
  return static_cast<int64_t>(table[j / bs]) * bs + j % bs;
}

template <typename T, int D, int WM, int WK, int BN, int STAGES>
struct FlashShape {
  static constexpr int kThreads = WM * WK * 32;
  static constexpr int kBM = 16 * WM;       // rows per block
  static constexpr int kLD = D + 8;         // shared row stride in elements (16 B of padding)
  static constexpr int kRLD = D + 4;        // F32 row stride of the warp-merge buffer
  static constexpr size_t kTileBytes = static_cast<size_t>(STAGES) * 2 * BN * kLD * sizeof(T);
  static constexpr size_t kMergeBytes = WK > 1 ? static_cast<size_t>(WK) * kBM * (kRLD + 2) * sizeof(float) : 0;
  static constexpr size_t kSmem = kTileBytes > kMergeBytes ? kTileBytes : kMergeBytes;
  static_assert(D % 16 == 0 && D <= 256, "head_dim must be a multiple of 16");
  static_assert(BN % (16 * WK) == 0, "each warp takes a multiple of 16 keys of a tile");
  static_assert(kBM <= BN, "the Q tile goes through one K stage");
  static_assert(STAGES >= 2, "at least double buffering");
};

// Blocks per SM the register budget aims at: the decode shape fits 3 in an H100 SM's shared memory
// (68 KiB each for D = 128), only 2 in an A100's, where asking for 3 would only cause spills.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define NB_ATTN_DECODE_MIN_BLOCKS 2
#else
#define NB_ATTN_DECODE_MIN_BLOCKS 3
#endif

template <typename T, int D, int WM, int WK, int BN, int STAGES>
__global__ void __launch_bounds__(WM * WK * 32, WK > 1 ? NB_ATTN_DECODE_MIN_BLOCKS : 2)
    flash_kernel(T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                 FlashParams p) {
  using Shape = FlashShape<T, D, WM, WK, BN, STAGES>;
  constexpr int NT = Shape::kThreads, BM = Shape::kBM, LD = Shape::kLD;
  constexpr int NKW = BN / WK;  // keys of a tile per warp
  constexpr int SN = NKW / 8;   // n-tiles of S per warp
  constexpr int DK = D / 16;    // k-steps of Q K^T
  constexpr int DN = D / 8;     // n-tiles of O
  constexpr int CPR = D / 8;    // 16-byte chunks per row

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* const sm = reinterpret_cast<T*>(smem_raw);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WK, wk = warp % WK;
  const int g = lane >> 2, t4 = lane & 3;
  const int s = blockIdx.z, kh = blockIdx.y;
  const int split = blockIdx.x % p.splits;
  const int rt = p.row_tiles - 1 - static_cast<int>(blockIdx.x) / p.splits;
  const int G = p.group;

  const int q0 = p.query_start[s], ql = p.query_start[s + 1] - q0, ctx = p.context_lens[s];
  const int rows = ql * G;
  const int r_begin = rt * BM;
  if (r_begin >= rows) return;  // a tile past this sequence's queries (block-uniform)
  const int r_end = min(r_begin + BM, rows);
  const int first_pos = ctx - ql + r_begin / G, last_pos = ctx - ql + (r_end - 1) / G;
  const int lo = p.window > 0 ? max(0, first_pos - p.window + 1) : 0;
  const int hi = last_pos + 1;
  int kb = lo, ke = hi;  // this block's keys: [kb, ke)
  if (p.splits > 1) {
    const int n = max(hi - lo, 0);
    const int chunk = ((n + p.splits - 1) / p.splits + BN - 1) / BN * BN;
    kb = lo + split * chunk;
    ke = min(hi, kb + chunk);
  }

  if (kb >= ke) {
    // No keys for this split: mark its rows empty for the merge and leave.
    if (p.splits > 1) {
      for (int r = r_begin + tid; r < r_end; r += NT) {
        const int64_t idx = (static_cast<int64_t>(q0 + r / G) * p.heads + kh * G + r % G) * p.splits + split;
        p.part_ml[idx] = make_float2(-INFINITY, 0.f);
      }
    }
    return;
  }

  // This lane's two rows (g and g + 8 of its warp's 16): valid key range [row_lo, row_hi].
  int row_lo[2], row_hi[2];
  bool row_ok[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int r = r_begin + wm * 16 + g + 8 * i;
    row_ok[i] = r < r_end;
    if (row_ok[i]) {
      const int pos = ctx - ql + r / G;
      row_lo[i] = max(kb, p.window > 0 ? max(0, pos - p.window + 1) : 0);
      row_hi[i] = min(ke - 1, pos);
    } else {
      row_lo[i] = kb;
      row_hi[i] = ke - 1;
    }
  }
  const int mask_lo = max(row_lo[0], row_lo[1]), mask_hi = min(row_hi[0], row_hi[1]);

  // ---- Q tile -> last ring stage (K half) -> registers.
  T* const q_sm = sm + (STAGES - 1) * 2 * BN * LD;
  for (int i = tid; i < BM * CPR; i += NT) {
    const int rr = i / CPR, c = i % CPR, r = r_begin + rr;
    const bool v = r < r_end;
    const T* src = v ? q + (static_cast<int64_t>(q0 + r / G) * p.heads + kh * G + r % G) * D + c * 8 : q;
    cp_async16(smem_u32(q_sm + rr * LD + c * 8), src, v);
  }
  cp_async_commit();

  const int32_t* const table = p.block_tables + static_cast<int64_t>(s) * p.max_blocks;
  const int64_t kv_stride = static_cast<int64_t>(p.kv_heads) * D;
  auto load_tile = [&](int ts, int stage) {
    T* const ks = sm + stage * 2 * BN * LD;
    T* const vs = ks + BN * LD;
    constexpr int kIters = (BN * CPR + NT - 1) / NT;
#pragma unroll
    for (int k = 0; k < kIters; ++k) {
      const int i = tid + k * NT;
      if ((BN * CPR) % NT != 0 && i >= BN * CPR) break;
      const int kr = i / CPR, c = i % CPR, j = ts + kr;
      const bool v = j < ke;
      int64_t off = 0;
      if (v) off = kv_slot(table, j, p.block_size, p.bs_shift) * kv_stride + kh * D + c * 8;
      cp_async16(smem_u32(ks + kr * LD + c * 8), kc + off, v);
      cp_async16(smem_u32(vs + kr * LD + c * 8), vc + off, v);
    }
  };

  const int ntiles = (ke - kb + BN - 1) / BN;
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < ntiles) load_tile(kb + st * BN, st);
    cp_async_commit();
  }
  cp_async_wait<STAGES - 1>();  // the Q group (committed first) has landed
  __syncthreads();
  uint32_t qf[DK][4];
#pragma unroll
  for (int kk = 0; kk < DK; ++kk)
    ldmatrix_x4(qf[kk], smem_u32(q_sm + (wm * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * LD + kk * 16 + 8 * (lane >> 4)));
  __syncthreads();  // the loop's first load overwrites the Q stage

  float o[DN][4];
#pragma unroll
  for (int nt = 0; nt < DN; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  for (int it = 0; it < ntiles; ++it) {
    {
      const int nx = it + STAGES - 1;
      if (nx < ntiles) load_tile(kb + nx * BN, nx % STAGES);
      cp_async_commit();
    }
    cp_async_wait<STAGES - 1>();
    __syncthreads();

    const T* const ks = sm + (it % STAGES) * 2 * BN * LD + wk * NKW * LD;  // this warp's keys
    const T* const vs = ks + BN * LD;

    // S = Q K^T for this warp's NKW keys.
    float sacc[SN][4];
#pragma unroll
    for (int nt = 0; nt < SN; ++nt) sacc[nt][0] = sacc[nt][1] = sacc[nt][2] = sacc[nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < DK; ++kk) {
#pragma unroll
      for (int np = 0; np < SN / 2; ++np) {
        uint32_t b[4];
        ldmatrix_x4(b, smem_u32(ks + (np * 16 + 8 * (lane >> 4) + (lane & 7)) * LD + kk * 16 + 8 * ((lane >> 3) & 1)));
        Mma<T>::mma(sacc[2 * np], qf[kk], b[0], b[1]);
        Mma<T>::mma(sacc[2 * np + 1], qf[kk], b[2], b[3]);
      }
    }

    // Scale into the log2 domain; mask keys outside each row's range when the tile needs it.
    const int ts = kb + it * BN + wk * NKW;  // key index of this warp's first key
    const bool need_mask = ts < mask_lo || ts + NKW - 1 > mask_hi;
#pragma unroll
    for (int nt = 0; nt < SN; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = sacc[nt][e] * p.scale_log2;
        if (need_mask) {
          const int j = ts + nt * 8 + 2 * t4 + (e & 1), i = e >> 1;
          v = (j < row_lo[i] || j > row_hi[i]) ? -INFINITY : v;
        }
        sacc[nt][e] = v;
      }
    }

    // Online softmax per row (a row lives in the 4 lanes of a quad).
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < SN; ++nt) mx = fmaxf(mx, fmaxf(sacc[nt][2 * i], sacc[nt][2 * i + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_run[i], mx);
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float corr = exp2f(m_run[i] - m_use);  // 0 while the row had no key yet
      m_run[i] = m_new;
      float rs = 0.f;
#pragma unroll
      for (int nt = 0; nt < SN; ++nt) {
        sacc[nt][2 * i] = exp2f(sacc[nt][2 * i] - m_use);
        sacc[nt][2 * i + 1] = exp2f(sacc[nt][2 * i + 1] - m_use);
        rs += sacc[nt][2 * i] + sacc[nt][2 * i + 1];
      }
      l_run[i] = l_run[i] * corr + rs;  // this lane's columns only; the quad is summed at the end
#pragma unroll
      for (int nt = 0; nt < DN; ++nt) {
        o[nt][2 * i] *= corr;
        o[nt][2 * i + 1] *= corr;
      }
    }

    // O += P V: the S accumulators of two adjacent n-tiles form one A fragment (16 keys).
#pragma unroll
    for (int kk = 0; kk < SN / 2; ++kk) {
      uint32_t a[4];
      a[0] = Mma<T>::pair(sacc[2 * kk][0], sacc[2 * kk][1]);
      a[1] = Mma<T>::pair(sacc[2 * kk][2], sacc[2 * kk][3]);
      a[2] = Mma<T>::pair(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]);
      a[3] = Mma<T>::pair(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3]);
#pragma unroll
      for (int np = 0; np < DN / 2; ++np) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, smem_u32(vs + (kk * 16 + 8 * ((lane >> 3) & 1) + (lane & 7)) * LD + 8 * (2 * np + (lane >> 4))));
        Mma<T>::mma(o[2 * np], a, b[0], b[1]);
        Mma<T>::mma(o[2 * np + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // the next iteration's load overwrites this stage
  }
  cp_async_wait<0>();

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
    l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
  }

  if constexpr (WK == 1) {
    // Each warp owns its 16 rows: write straight from the accumulators.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (!row_ok[i]) continue;
      const int r = r_begin + wm * 16 + g + 8 * i;
      const int64_t orow = static_cast<int64_t>(q0 + r / G) * p.heads + kh * G + r % G;
      if (p.splits == 1) {
        const float inv = l_run[i] > 0.f ? 1.f / l_run[i] : 0.f;
        T* const dst = out + orow * D + 2 * t4;
#pragma unroll
        for (int nt = 0; nt < DN; ++nt)
          *reinterpret_cast<uint32_t*>(dst + nt * 8) = Mma<T>::pair(o[nt][2 * i] * inv, o[nt][2 * i + 1] * inv);
      } else {
        const int64_t idx = orow * p.splits + split;
        if (t4 == 0) p.part_ml[idx] = make_float2(m_run[i], l_run[i]);
        float* const dst = p.part_acc + idx * D + 2 * t4;
#pragma unroll
        for (int nt = 0; nt < DN; ++nt)
          *reinterpret_cast<float2*>(dst + nt * 8) = make_float2(o[nt][2 * i], o[nt][2 * i + 1]);
      }
    }
  } else {
    // The WK warps of a row group hold partial states over different keys: merge them.
    constexpr int RLD = Shape::kRLD;
    float* const racc = reinterpret_cast<float*>(smem_raw);  // [WK][BM][RLD]
    float* const rm = racc + WK * BM * RLD;                  // [WK][BM]
    float* const rl = rm + WK * BM;                          // [WK][BM]
    __syncthreads();  // every warp is done with the tiles
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int row = wm * 16 + g + 8 * i;
      float* const dst = racc + (wk * BM + row) * RLD + 2 * t4;
#pragma unroll
      for (int nt = 0; nt < DN; ++nt) *reinterpret_cast<float2*>(dst + nt * 8) = make_float2(o[nt][2 * i], o[nt][2 * i + 1]);
      if (t4 == 0) {
        rm[wk * BM + row] = m_run[i];
        rl[wk * BM + row] = l_run[i];
      }
    }
    __syncthreads();
    for (int idx = tid; idx < BM * D; idx += NT) {
      const int row = idx / D, c = idx % D, r = r_begin + row;
      if (r >= r_end) continue;
      float mx = -INFINITY;
#pragma unroll
      for (int w = 0; w < WK; ++w) mx = fmaxf(mx, rm[w * BM + row]);
      const float mu = mx == -INFINITY ? 0.f : mx;
      float L = 0.f, num = 0.f;
#pragma unroll
      for (int w = 0; w < WK; ++w) {
        const float wt = exp2f(rm[w * BM + row] - mu);
        L += wt * rl[w * BM + row];
        num += wt * racc[(w * BM + row) * RLD + c];
      }
      const int64_t orow = static_cast<int64_t>(q0 + r / G) * p.heads + kh * G + r % G;
      if (p.splits == 1) {
        out[orow * D + c] = from_f<T>(L > 0.f ? num / L : 0.f);
      } else {
        const int64_t pidx = orow * p.splits + split;
        p.part_acc[pidx * D + c] = num;
        if (c == 0) p.part_ml[pidx] = make_float2(mx, L);
      }
    }
  }
}

// Combines the splits of one (query row, head): out = sum_p w_p acc_p / sum_p w_p l_p with
// w_p = 2^(m_p - max m). Splits without keys (m = -inf) weigh 0 and their acc is never read.
template <typename T>
__global__ void __launch_bounds__(128) merge_kernel(T* __restrict__ out, const float* __restrict__ acc,
                                                    const float2* __restrict__ ml, int splits, int d) {
  const int64_t row = blockIdx.x;
  __shared__ float w[kMaxSplits];
  __shared__ float red[2][4];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float2* const mlr = ml + row * splits;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < splits; i += blockDim.x) mx = fmaxf(mx, mlr[i].x);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) red[0][warp] = mx;
  __syncthreads();
  mx = fmaxf(fmaxf(red[0][0], red[0][1]), fmaxf(red[0][2], red[0][3]));
  const float mu = mx == -INFINITY ? 0.f : mx;
  float L = 0.f;
  for (int i = threadIdx.x; i < splits; i += blockDim.x) {
    const float2 v = mlr[i];
    const float wi = v.x == -INFINITY ? 0.f : exp2f(v.x - mu);
    w[i] = wi;
    L += wi * v.y;
  }
  L = warp_sum(L);
  if (lane == 0) red[1][warp] = L;
  __syncthreads();
  L = red[1][0] + red[1][1] + red[1][2] + red[1][3];
  const float inv = L > 0.f ? 1.f / L : 0.f;
  const float* const a = acc + row * splits * d;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float num = 0.f;
    for (int i = 0; i < splits; ++i)
      if (w[i] != 0.f) num += w[i] * a[static_cast<int64_t>(i) * d + c];
    out[row * d + c] = from_f<T>(num * inv);
  }
}

int sm_count() {
  static std::atomic<int> cache[64];
  int dev = 0;
  NB_CUDA_CHECK(cudaGetDevice(&dev));
  int v = cache[dev & 63].load(std::memory_order_relaxed);
  if (v == 0) {
    NB_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    cache[dev & 63].store(v, std::memory_order_relaxed);
  }
  return v;
}

constexpr int kFlashBN = 64, kFlashStages = 2;

// Launches one shape of flash_kernel (raising its dynamic shared memory limit once per device).
template <typename T, int D, int WM, int WK>
void run_flash(cudaStream_t st, dim3 grid, T* out, const T* q, const T* kc, const T* vc, const FlashParams& p) {
  using Shape = FlashShape<T, D, WM, WK, kFlashBN, kFlashStages>;
  auto kernel = flash_kernel<T, D, WM, WK, kFlashBN, kFlashStages>;
  static std::atomic<uint64_t> configured{0};
  int dev = 0;
  NB_CUDA_CHECK(cudaGetDevice(&dev));
  const uint64_t bit = uint64_t{1} << (dev & 63);
  if (!(configured.load(std::memory_order_relaxed) & bit)) {
    NB_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Shape::kSmem)));
    configured.fetch_or(bit, std::memory_order_relaxed);
  }
  kernel<<<grid, Shape::kThreads, Shape::kSmem, st>>>(out, q, kc, vc, p);
  NB_CUDA_LAUNCHED();
}

template <typename T, int D>
void run_flash_shape(bool decode, cudaStream_t st, dim3 grid, T* out, const T* q, const T* kc, const T* vc,
                     const FlashParams& p) {
  if (decode) run_flash<T, D, 1, 4>(st, grid, out, q, kc, vc, p);
  else run_flash<T, D, 4, 1>(st, grid, out, q, kc, vc, p);
}

template <typename T>
void run_flash_dim(int d, bool decode, cudaStream_t st, dim3 grid, T* out, const T* q, const T* kc, const T* vc,
                   const FlashParams& p) {
  switch (d) {
    case 64: run_flash_shape<T, 64>(decode, st, grid, out, q, kc, vc, p); break;
    case 80: run_flash_shape<T, 80>(decode, st, grid, out, q, kc, vc, p); break;
    case 96: run_flash_shape<T, 96>(decode, st, grid, out, q, kc, vc, p); break;
    case 128: run_flash_shape<T, 128>(decode, st, grid, out, q, kc, vc, p); break;
    default: NB_CHECK(false, "attention: no flash kernel for head_dim %d", d);
  }
}

bool flash_head_dim(int d) { return d == 64 || d == 80 || d == 96 || d == 128; }

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

void launch_attention(CudaBackend& be, const TensorView& out, const TensorView& q, const TensorView& kc,
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
  const int64_t T = q.dim(0);
  if (T == 0) return;
  cudaStream_t s = be.stream();

  // NIBBLE_CUDA_ATTENTION=fallback forces the first kernel (tests and A/B timing; read every call).
  const char* force = std::getenv("NIBBLE_CUDA_ATTENTION");
  const bool forced_fallback = force && std::strcmp(force, "fallback") == 0;
  const bool flash = !forced_fallback && a.head_dim == a.v_head_dim && flash_head_dim(a.head_dim) &&
                     a.num_seqs <= 65535 && a.num_kv_heads <= 65535 && aligned16(q.data) && aligned16(out.data) &&
                     aligned16(kc.data) && aligned16(vc.data);
  if (flash) {
    const int group = a.num_heads / a.num_kv_heads, d = a.head_dim;
    // max_query_len is a hint: 0 (unset) means "up to every row"; it can never exceed the rows.
    const int64_t maxq = a.max_query_len > 0 ? std::min<int64_t>(a.max_query_len, T) : T;
    const bool decode = maxq <= 4;
    const int bm = decode ? 16 : 64;
    const int64_t row_tiles = ceil_div(maxq * group, bm);
    const int64_t blocks = row_tiles * a.num_kv_heads * a.num_seqs;
    const int sms = sm_count();
    // Splits: decode aims at ~8 blocks per SM (memory-bound, small blocks), never below 64 keys per
    // split; prefill splits only when the row tiles do not fill the GPU once, never below 256 keys.
    const int64_t ctx_cap = std::max<int64_t>(a.max_context_len, 1);
    int64_t splits;
    if (decode) {
      splits = std::min<int64_t>(std::max<int64_t>(8 * sms / blocks, 1), ceil_div(ctx_cap, 64));
    } else {
      splits = blocks >= sms ? 1 : std::min<int64_t>(ceil_div(2 * sms, blocks), ceil_div(ctx_cap, 256));
    }
    splits = std::clamp<int64_t>(splits, 1, kMaxSplits);
    if (row_tiles * splits <= INT32_MAX) {
      FlashParams p{};
      p.query_start = a.query_start;
      p.context_lens = a.context_lens;
      p.block_tables = a.block_tables;
      p.max_blocks = a.max_blocks_per_seq;
      p.block_size = a.block_size;
      p.bs_shift = (a.block_size & (a.block_size - 1)) == 0 ? __builtin_ctz(static_cast<unsigned>(a.block_size)) : -1;
      p.heads = a.num_heads;
      p.kv_heads = a.num_kv_heads;
      p.group = group;
      p.window = a.sliding_window;
      p.scale_log2 = a.scale * kLog2e;
      p.row_tiles = static_cast<int>(row_tiles);
      p.splits = static_cast<int>(splits);
      const int64_t parts = T * a.num_heads * splits;
      if (splits > 1) {
        size_t bytes = static_cast<size_t>(parts) * (static_cast<size_t>(d) * 4 + 8);
        // Decode: T * heads * splits <= 16 rows * (8 * sms) blocks whenever max_query_len is honest,
        // so this one size fits every decode batch (graph capture/replay never reallocates).
        if (decode) bytes = std::max(bytes, static_cast<size_t>(16) * 8 * sms * (static_cast<size_t>(d) * 4 + 8));
        char* buf = static_cast<char*>(be.scratch(decode ? 4 : 5, bytes));
        p.part_acc = reinterpret_cast<float*>(buf);
        p.part_ml = reinterpret_cast<float2*>(buf + static_cast<size_t>(parts) * d * 4);
      }
      const dim3 grid(static_cast<unsigned>(row_tiles * splits), static_cast<unsigned>(a.num_kv_heads),
                      static_cast<unsigned>(a.num_seqs));
      if (q.dtype == DType::kBF16) {
        run_flash_dim<__nv_bfloat16>(d, decode, s, grid, out.as<__nv_bfloat16>(), q.as<const __nv_bfloat16>(),
                                     kc.as<const __nv_bfloat16>(), vc.as<const __nv_bfloat16>(), p);
        if (splits > 1)
          merge_kernel<__nv_bfloat16><<<static_cast<unsigned>(T * a.num_heads), 128, 0, s>>>(
              out.as<__nv_bfloat16>(), p.part_acc, p.part_ml, p.splits, d);
      } else {
        run_flash_dim<__half>(d, decode, s, grid, out.as<__half>(), q.as<const __half>(), kc.as<const __half>(),
                              vc.as<const __half>(), p);
        if (splits > 1)
          merge_kernel<__half><<<static_cast<unsigned>(T * a.num_heads), 128, 0, s>>>(out.as<__half>(), p.part_acc,
                                                                                     p.part_ml, p.splits, d);
      }
      if (splits > 1) NB_CUDA_LAUNCHED();
      return;
    }
  }

  AttnParams p{a.query_start, a.context_lens, a.block_tables, a.num_seqs, a.max_blocks_per_seq, a.block_size,
               a.num_heads, a.num_kv_heads, a.head_dim, a.v_head_dim, a.sliding_window, a.scale};
  const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>(a.num_heads));
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
