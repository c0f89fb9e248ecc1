// linear: out [M, N] = x [M, K] @ W^T (+ bias), for quantized (INT4/INT8) and dense weights.
//
// Kernel layout of a quantized weight (CudaQuantWeight), made by pack_quantized from the canonical
// plain layout (ops::QuantWeightView):
// - Input columns are regrouped so that each group's columns are contiguous (ascending column order
//   within a group: a stable argsort of g_idx) and each group is padded to a multiple of 32 columns
//   (a "chunk"). kp = packed columns. Without g_idx this is the identity when group_size and in are
//   multiples of 32; otherwise src_col [kp] maps packed column -> input column (-1 = padding) and x is
//   gathered per call into [M, kp] with zeros in the padding (so padded codes contribute nothing).
// - Every chunk lies in one group: group(c) = chunk_group[c] with g_idx, else c / chunks_per_group.
// - INT4 codes: [out, kp / 2] bytes, row-major; in each chunk of 16 bytes, 32-bit word w holds packed
//   columns 8w..8w+7, nibble i (bits 4i..4i+3) = column 8w+i, stored unsigned: u = q + 8. For the
//   identity layout this is the canonical byte stream with every nibble's sign bit flipped (^ 0x88).
//   A lane loads one chunk with one 16-byte load: a warp reads 512 contiguous bytes of a row.
// - INT8 codes: [out, kp] bytes, u = q + 128, natural order (two 16-byte loads per chunk).
// - scales: F32 [out, G] (exact for BF16/F16/F32 sources). zeros: F32 [out, G] holding the offset
//   (8 + z for INT4, 128 + z for INT8), null when symmetric (the offset is then 8 or 128).
// Weight value: W[n][k] = (u - offset) * s, computed in F32 (the reference rounds that product to
// the scale dtype; the difference is one bf16 rounding of each weight, far below the test tolerance).
//
// Kernels: M = 1 uses an F32-FMA GEMV (gemv_kernel); 2 <= M <= 16 (INT4) uses mma_kernel, which
// dequantizes on the fly into bf16/f16 tensor-core fragments (mma.sync m16n8k16, F32 accumulation):
// (u - offset) is built exactly with the 0x4300 (bf16 128.0) / 0x6400 (f16 1024.0) magic and one
// subtraction, then multiplied by the scale in the activation dtype (one rounding, as the reference);
// larger M dequantizes the whole weight to the activation dtype in a scratch buffer and calls
// cuBLAS (correct first; an mma kernel that skips the scratch pass is future work).
#include <algorithm>
#include <cstring>

#include "backends/cuda/cuda_common.cuh"
#include "backends/cuda/mma.cuh"
#include "backends/cuda/w4_tiled.h"
#include "ops/quant_weight.h"

namespace nb::cuda {

CudaQuantWeight::~CudaQuantWeight() {
  cudaDeviceSynchronize();  // a kernel in flight may still read the weight
  // tscales, toffs and tile_group belong to the backend's arena.
  for (void* p : {codes, static_cast<void*>(scales), static_cast<void*>(zeros), static_cast<void*>(chunk_group),
                  static_cast<void*>(src_col)})
    if (p) cudaFree(p);
}

CudaDenseWeight::~CudaDenseWeight() {
  cudaDeviceSynchronize();
  if (data) cudaFree(data);
}

namespace {

constexpr int kChunk = 32;
constexpr int kGemvWarps = 4;
constexpr int kRowsPerWarp = 2;
constexpr int kGemvMaxM = 8;   // rows of x per GEMV launch (the tile)
constexpr int64_t kAutoGemvM = 16;  // kAuto: GEMV up to this M, dequantize + cuBLAS above
constexpr int64_t kTiledMaxM = 64;  // kAuto on tiled weights: tiled kernel up to this M, dequantize + cuBLAS above (bench_cuda)

struct QuantArgs {
  const uint8_t* codes;
  const float* scales;
  const float* zeros;
  const int32_t* chunk_group;
  int64_t n, kp, groups, chunks_per_group, row_bytes;
};

// float(u) for a small unsigned integer u, by placing it in the mantissa of 2^23 (no I2F).
__device__ __forceinline__ float u2f_biased(uint32_t u) { return __uint_as_float(0x4B000000u | u); }

// 32 values of x (one chunk) as floats; T is bf16 or f16, 16-byte aligned.
template <typename T>
__device__ __forceinline__ void load_chunk(const T* x, float (&xf)[kChunk]) {
  const uint4* p = reinterpret_cast<const uint4*>(x);
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    const uint4 raw = __ldg(p + v);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) xf[8 * v + i] = to_f(e[i]);
  }
}

// Dequantized offsets (u - offset) of one chunk of a row, without the scale.
template <int BITS>
__device__ __forceinline__ void chunk_values(const uint8_t* row, int64_t c, float off, float (&w)[kChunk]) {
  const float bias = 8388608.f + off;  // exact: off is a small integer
  if constexpr (BITS == 4) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + c * 16));
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int v = 0; v < 4; ++v)
#pragma unroll
      for (int i = 0; i < 8; ++i) w[8 * v + i] = u2f_biased((words[v] >> (4 * i)) & 0xFu) - bias;
  } else {
    const uint4* p = reinterpret_cast<const uint4*>(row + c * 32);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint4 raw = __ldg(p + h);
      const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int v = 0; v < 4; ++v)
#pragma unroll
        for (int i = 0; i < 4; ++i) w[16 * h + 4 * v + i] = u2f_biased((words[v] >> (8 * i)) & 0xFFu) - bias;
    }
  }
}

// GEMV for M <= kGemvMaxM: each warp owns kRowsPerWarp output rows; lane l handles chunks l, l+32, ...
// out[m, n] = sum_c s(n, g(c)) * sum_{k in c} x[m, k] * (u - offset).
template <typename T, int BITS, int MT>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(T* out, int64_t ldo, const T* x, int64_t ldx,
                                                               int m_count, QuantArgs w, const void* bias,
                                                               DType bias_dtype) {
  const int lane = threadIdx.x % 32;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32) * kRowsPerWarp;
  if (n0 >= w.n) return;
  const float sym_off = BITS == 4 ? 8.f : 128.f;
  float acc[kRowsPerWarp][MT];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;
  const int64_t chunks = w.kp / kChunk;
  for (int64_t c = lane; c < chunks; c += 32) {
    const int64_t g = w.chunk_group ? w.chunk_group[c] : c / w.chunks_per_group;
    float wv[kRowsPerWarp][kChunk], s[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t n = n0 + r < w.n ? n0 + r : w.n - 1;  // a missing last row recomputes row n-1, never stored
      s[r] = __ldg(w.scales + n * w.groups + g);
      const float off = w.zeros ? __ldg(w.zeros + n * w.groups + g) : sym_off;
      chunk_values<BITS>(w.codes + n * w.row_bytes, c, off, wv[r]);
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= m_count) break;
      float xf[kChunk];
      load_chunk(x + m * ldx + c * kChunk, xf);
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        float p = 0.f;
#pragma unroll
        for (int i = 0; i < kChunk; ++i) p = fmaf(xf[i], wv[r][i], p);
        acc[r][m] = fmaf(s[r], p, acc[r][m]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t n = n0 + r;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= m_count) break;
      const float v = warp_sum(acc[r][m]);
      if (lane == 0 && n < w.n) out[m * ldo + n] = from_f<T>(v + (bias ? load_f(bias, bias_dtype, n) : 0.f));
    }
  }
}


// ---- tensor-core small-M kernel (INT4) ----------------------------------------------------------------
// A block of kMmaWarps warps owns 16 output rows; warp w takes chunks w, w + kMmaWarps, ... (split K)
// and the partial 16 x 16 tiles are summed in shared memory. Per chunk (32 columns = 2 k-steps of 16),
// thread (g = lane / 4, t = lane % 4) loads the 16-byte chunk of rows g and g + 8 and takes byte t of
// each word: the nibbles of columns 2t, 2t+1 (+8) are exactly its A-fragment elements. B = x rows
// (m = g and g + 8), two bf16 per 32-bit register, zero past m_count.
constexpr int kMmaWarps = 4;

// Byte t of a code word as a T2 pair (kBase + lo, kBase + hi).
__device__ __forceinline__ uint32_t nibble_pair(uint32_t word, int t, uint32_t magic) {
  const uint32_t b = (word >> (8 * t)) & 0xFFu;
  return (b & 0xFu) | ((b & 0xF0u) << 12) | magic;
}

template <typename T, int NT>  // NT = 1 (M <= 8) or 2 (M <= 16) tiles of 8 rows of x
__global__ void __launch_bounds__(kMmaWarps * 32) mma_kernel(T* out, int64_t ldo, const T* x, int64_t ldx,
                                                             int m_count, QuantArgs w, const void* bias,
                                                             DType bias_dtype) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * 16;
  const int64_t r0 = min(n0 + g, w.n - 1), r1 = min(n0 + g + 8, w.n - 1);  // clamped rows are never stored
  const uint8_t* row0 = w.codes + r0 * w.row_bytes;
  const uint8_t* row1 = w.codes + r1 * w.row_bytes;
  float c[NT][4] = {};
  const int64_t chunks = w.kp / kChunk;
  for (int64_t ch = warp; ch < chunks; ch += kMmaWarps) {
    const int64_t grp = w.chunk_group ? w.chunk_group[ch] : ch / w.chunks_per_group;
    const uint4 q0 = __ldg(reinterpret_cast<const uint4*>(row0 + ch * 16));
    const uint4 q1 = __ldg(reinterpret_cast<const uint4*>(row1 + ch * 16));
    const float s0 = __ldg(w.scales + r0 * w.groups + grp), s1 = __ldg(w.scales + r1 * w.groups + grp);
    const float o0 = w.zeros ? __ldg(w.zeros + r0 * w.groups + grp) : 8.f;
    const float o1 = w.zeros ? __ldg(w.zeros + r1 * w.groups + grp) : 8.f;
    const uint32_t base0 = Mma<T>::pair(Mma<T>::kBase + o0, Mma<T>::kBase + o0);
    const uint32_t base1 = Mma<T>::pair(Mma<T>::kBase + o1, Mma<T>::kBase + o1);
    const uint32_t sc0 = Mma<T>::pair(s0, s0), sc1 = Mma<T>::pair(s1, s1);
    const uint32_t w0[4] = {q0.x, q0.y, q0.z, q0.w}, w1[4] = {q1.x, q1.y, q1.z, q1.w};
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      uint32_t a[4];
      a[0] = Mma<T>::sub_mul(nibble_pair(w0[2 * ks], t, Mma<T>::kMagic), base0, sc0);
      a[1] = Mma<T>::sub_mul(nibble_pair(w1[2 * ks], t, Mma<T>::kMagic), base1, sc1);
      a[2] = Mma<T>::sub_mul(nibble_pair(w0[2 * ks + 1], t, Mma<T>::kMagic), base0, sc0);
      a[3] = Mma<T>::sub_mul(nibble_pair(w1[2 * ks + 1], t, Mma<T>::kMagic), base1, sc1);
      const int64_t k0 = ch * kChunk + ks * 16 + 2 * t;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int m = nt * 8 + g;
        uint32_t b0 = 0, b1 = 0;
        if (m < m_count) {
          b0 = __ldg(reinterpret_cast<const unsigned int*>(x + m * ldx + k0));
          b1 = __ldg(reinterpret_cast<const unsigned int*>(x + m * ldx + k0 + 8));
        }
        Mma<T>::mma(c[nt], a, b0, b1);
      }
    }
  }
  // c[nt]: (row g, cols 2t, 2t+1) and (row g + 8, same cols); rows = n, cols = m within tile nt.
  __shared__ float part[kMmaWarps][16][16];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    part[warp][g][nt * 8 + 2 * t] = c[nt][0];
    part[warp][g][nt * 8 + 2 * t + 1] = c[nt][1];
    part[warp][g + 8][nt * 8 + 2 * t] = c[nt][2];
    part[warp][g + 8][nt * 8 + 2 * t + 1] = c[nt][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 16 * 8 * NT; i += blockDim.x) {
    const int r = i % 16, m = i / 16;
    const int64_t n = n0 + r;
    if (m >= m_count || n >= w.n) continue;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < kMmaWarps; ++k) v += part[k][r][m];
    out[m * ldo + n] = from_f<T>(v + (bias ? load_f(bias, bias_dtype, n) : 0.f));
  }
}

// Dequantizes the whole weight into wd [n, kp] (activation dtype) for the cuBLAS path.
template <typename T, int BITS>
__global__ void dequant_kernel(T* wd, QuantArgs w) {
  const int64_t chunks = w.kp / kChunk, total = w.n * chunks;
  const float sym_off = BITS == 4 ? 8.f : 128.f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / chunks, c = i % chunks;
    const int64_t g = w.chunk_group ? w.chunk_group[c] : c / w.chunks_per_group;
    const float s = w.scales[n * w.groups + g];
    const float off = w.zeros ? w.zeros[n * w.groups + g] : sym_off;
    float v[kChunk];
    chunk_values<BITS>(w.codes + n * w.row_bytes, c, off, v);
    T* dst = wd + n * w.kp + c * kChunk;
#pragma unroll
    for (int k = 0; k < kChunk; k += 8) {
      T e[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) e[j] = from_f<T>(v[k + j] * s);
      *reinterpret_cast<uint4*>(dst + k) = *reinterpret_cast<const uint4*>(e);
    }
  }
}

// INT4 variant: one thread per 32-bit code word (8 columns) and one 16-byte store, so a warp writes
// 512 contiguous bytes of wd.
template <typename T>
__global__ void dequant4_kernel(T* wd, QuantArgs w) {
  const int64_t words_per_row = w.kp / 8, total = w.n * words_per_row;
  const uint32_t* codes = reinterpret_cast<const uint32_t*>(w.codes);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / words_per_row, c = (i % words_per_row) / 4;
    const int64_t g = w.chunk_group ? w.chunk_group[c] : c / w.chunks_per_group;
    const float s = w.scales[n * w.groups + g];
    const float bias = 8388608.f + (w.zeros ? w.zeros[n * w.groups + g] : 8.f);
    const uint32_t word = __ldg(codes + i);
    T e[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) e[j] = from_f<T>((u2f_biased((word >> (4 * j)) & 0xFu) - bias) * s);
    *reinterpret_cast<uint4*>(wd + i * 8) = *reinterpret_cast<const uint4*>(e);
  }
}

// xp [M, kp] = x gathered by src_col (0 in the padding); src_col null = plain copy of the first K.
template <typename T>
__global__ void gather_kernel(T* xp, int64_t kp, const T* x, int64_t ldx, int64_t k, const int32_t* src_col,
                              int64_t m) {
  const int64_t total = m * kp;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / kp, j = i % kp;
    const int64_t src = src_col ? src_col[j] : (j < k ? j : -1);
    xp[i] = src >= 0 ? x[r * ldx + src] : from_f<T>(0.f);
  }
}

int blocks_for(int64_t total, int threads) {
  return static_cast<int>(std::min<int64_t>(ceil_div(total, threads), 8 * 65536));
}

// ---- packing (host) --------------------------------------------------------------------------------

template <typename V>
V* upload_vec(CudaBackend& be, const std::vector<V>& v) {
  if (v.empty()) return nullptr;
  V* p = static_cast<V*>(be.alloc(v.size() * sizeof(V)));
  be.upload(p, v.data(), v.size() * sizeof(V));
  return p;
}

// Column plan: src_col (empty for the identity) and chunk_group (empty when c / chunks_per_group).
void plan_columns(const ops::QuantWeightView& w, CudaQuantWeight& p, std::vector<int32_t>& src_col,
                  std::vector<int32_t>& chunk_group) {
  std::vector<std::vector<int32_t>> members(static_cast<size_t>(w.num_groups));
  for (int64_t k = 0; k < w.in; ++k) members[static_cast<size_t>(ops::quant_group(w, k))].push_back(static_cast<int32_t>(k));
  int64_t chunks = 0;
  for (const auto& m : members) chunks += ceil_div(static_cast<int64_t>(m.size()), kChunk);
  p.kp = chunks * kChunk;
  p.chunks_per_group = ceil_div(w.group_size, kChunk);
  p.identity = !w.g_idx && w.group_size % kChunk == 0 && w.in % kChunk == 0;
  if (p.identity) return;
  src_col.assign(static_cast<size_t>(p.kp), -1);
  int64_t c = 0;
  for (int64_t g = 0; g < w.num_groups; ++g) {
    const auto& m = members[static_cast<size_t>(g)];
    std::copy(m.begin(), m.end(), src_col.begin() + c * kChunk);
    const int64_t n = ceil_div(static_cast<int64_t>(m.size()), kChunk);
    for (int64_t i = 0; i < n; ++i) chunk_group.push_back(static_cast<int32_t>(g));
    c += n;
  }
  if (!w.g_idx) chunk_group.clear();  // uniform groups: c / chunks_per_group holds
}

std::vector<uint8_t> pack_codes(const ops::QuantWeightView& w, const CudaQuantWeight& p,
                                const std::vector<int32_t>& src_col) {
  const int64_t row_bytes = w.bits == 4 ? p.kp / 2 : p.kp;
  std::vector<uint8_t> out(static_cast<size_t>(w.out * row_bytes), 0);
  if (p.identity && w.bits == 4) {  // the canonical stream with the nibble sign bits flipped
    for (size_t i = 0; i < out.size(); ++i) out[i] = w.codes[i] ^ 0x88;
    return out;
  }
  for (int64_t n = 0; n < w.out; ++n) {
    uint8_t* row = out.data() + n * row_bytes;
    for (int64_t j = 0; j < p.kp; ++j) {
      const int64_t src = p.identity ? j : src_col[static_cast<size_t>(j)];
      const int q = src < 0 ? 0 : ops::quant_code(w, n, src);
      if (w.bits == 8) {
        row[j] = static_cast<uint8_t>(q + 128);
      } else {
        row[j / 2] |= static_cast<uint8_t>((q + 8) << (4 * (j % 2)));
      }
    }
  }
  return out;
}

QuantArgs quant_args(const CudaQuantWeight& w) {
  return QuantArgs{static_cast<const uint8_t*>(w.codes), w.scales, w.zeros, w.chunk_group,
                   w.out, w.kp, w.groups, w.chunks_per_group, w.bits == 4 ? w.kp / 2 : w.kp};
}

}  // namespace

Result<std::unique_ptr<ops::PackedWeight>> CudaBackend::pack_quantized(const ops::QuantWeightView& w) {
  NB_RETURN_IF_ERROR(ops::validate_quant_weight(w));
  auto p = std::make_unique<CudaQuantWeight>();
  p->out = w.out;
  p->in = w.in;
  p->quantized = true;
  p->bits = w.bits;
  p->group_size = w.group_size;
  p->groups = w.num_groups;
  p->asym = w.zeros != nullptr;
  std::vector<int32_t> src_col, chunk_group;
  plan_columns(w, *p, src_col, chunk_group);
  const size_t gsz = static_cast<size_t>(w.out * w.num_groups);
  std::vector<float> scales(gsz), zeros;
  for (size_t i = 0; i < gsz; ++i) scales[i] = load_as_float(w.scales, w.scale_dtype, i);
  if (w.zeros) {
    zeros.resize(gsz);
    for (size_t i = 0; i < gsz; ++i) zeros[i] = static_cast<float>((w.bits == 4 ? 8 : 128) + w.zeros[i]);
  }
  // The tensor-core path builds (u - offset) exactly in bf16 only when 128 + offset stays below 256.
  p->mma_ok = w.bits == 4;
  for (float z : zeros) p->mma_ok = p->mma_ok && z >= 0.f && z <= 120.f;
  if (tiled_eligible(*p, chunk_group)) {
    if (p->identity) {
      // The canonical stream already is the chunked layout: upload it as it is (no host copy; the
      // device flips the nibble signs while retiling). This is most of the start-up time saved.
      pack_tiled(*this, *p, w.codes, true, scales, zeros, chunk_group);
    } else {
      const std::vector<uint8_t> codes = pack_codes(w, *p, src_col);
      pack_tiled(*this, *p, codes.data(), false, scales, zeros, chunk_group);
    }
    p->src_col = upload_vec(*this, src_col);
    p->device_bytes += src_col.size() * 4;
    return std::unique_ptr<ops::PackedWeight>(std::move(p));
  }
  const std::vector<uint8_t> codes = pack_codes(w, *p, src_col);
  p->codes = upload_vec(*this, codes);
  p->scales = upload_vec(*this, scales);
  p->zeros = upload_vec(*this, zeros);
  p->chunk_group = upload_vec(*this, chunk_group);
  p->src_col = upload_vec(*this, src_col);
  p->device_bytes = codes.size() + (scales.size() + zeros.size() + chunk_group.size() + src_col.size()) * 4;
  return std::unique_ptr<ops::PackedWeight>(std::move(p));
}

Result<std::unique_ptr<ops::PackedWeight>> CudaBackend::pack_dense(const TensorView& w) {
  if (w.rank() != 2 || !w.is_contiguous() ||
      (w.dtype != DType::kF32 && w.dtype != DType::kBF16 && w.dtype != DType::kF16))
    return invalid_argument(strformat("dense weight: expected a contiguous 2-D BF16/F16/F32 tensor, got %s %s",
                                      dtype_name(w.dtype), shape_to_string(w.shape).c_str()));
  if (w.dim(0) <= 0 || w.dim(1) <= 0)
    return invalid_argument(strformat("dense weight: shape must be positive, got %s", shape_to_string(w.shape).c_str()));
  auto p = std::make_unique<CudaDenseWeight>();
  p->out = w.dim(0);
  p->in = w.dim(1);
  p->quantized = false;
  p->bits = dtype_bits(act_);
  p->dtype = act_;  // converted once so that cuBLAS multiplies two activation-dtype operands
  const size_t n = static_cast<size_t>(w.numel());
  p->data = alloc(dtype_bytes(act_, n));
  p->device_bytes = dtype_bytes(act_, n);
  if (w.dtype == act_) {  // already the activation dtype: straight into place
    upload(p->data, w.data, w.nbytes());
  } else {  // converted on the device through a temporary (freed at once: an lm_head is ~1.5 GB)
    void* raw = alloc(w.nbytes());
    upload(raw, w.data, w.nbytes());
    const DevRows src{raw, w.dtype, 1, static_cast<int64_t>(n), static_cast<int64_t>(n)};
    const DevRows dst{p->data, act_, 1, static_cast<int64_t>(n), static_cast<int64_t>(n)};
    launch_binary(stream_, 4, dst, src, src);
    dealloc(raw);
  }
  synchronize();
  return std::unique_ptr<ops::PackedWeight>(std::move(p));
}

namespace {

cudaDataType_t cuda_type(DType t) { return t == DType::kBF16 ? CUDA_R_16BF : CUDA_R_16F; }

// out [M, N] = x [M, K] @ W [N, K]^T, all activation dtype, F32 accumulation (row-major, via the
// column-major identity out^T = W x^T).
void gemm(CudaBackend& be, const DevRows& out, const void* x, int64_t ldx, const void* wmat, int64_t k, DType t) {
  const float alpha = 1.f, beta = 0.f;
  NB_CUBLAS_CHECK(cublasGemmEx(be.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out.cols),
                               static_cast<int>(out.rows), static_cast<int>(k), &alpha, wmat, cuda_type(t),
                               static_cast<int>(k), x, cuda_type(t), static_cast<int>(ldx), &beta, out.data,
                               cuda_type(t), static_cast<int>(out.ld), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

template <typename T, int BITS, int MT>
void launch_gemv_t(cudaStream_t s, const DevRows& out, const void* x, int64_t ldx, int m, const QuantArgs& qa,
                   const TensorView* bias) {
  const int64_t rows_per_block = kGemvWarps * kRowsPerWarp;
  gemv_kernel<T, BITS, MT><<<static_cast<unsigned>(ceil_div(qa.n, rows_per_block)), kGemvWarps * 32, 0, s>>>(
      static_cast<T*>(out.data), out.ld, static_cast<const T*>(x), ldx, m, qa, bias ? bias->data : nullptr,
      bias ? bias->dtype : DType::kF32);
  NB_CUDA_LAUNCHED();
}

template <typename T, int BITS>
void launch_gemv(cudaStream_t s, const DevRows& out, const void* x, int64_t ldx, const QuantArgs& qa,
                 const TensorView* bias) {
  const size_t esz = sizeof(T);
  for (int64_t m0 = 0; m0 < out.rows; m0 += kGemvMaxM) {
    const int m = static_cast<int>(std::min<int64_t>(kGemvMaxM, out.rows - m0));
    DevRows o = out;
    o.data = static_cast<uint8_t*>(out.data) + m0 * out.ld * esz;
    const void* xm = static_cast<const uint8_t*>(x) + m0 * ldx * esz;
    if (m == 1) launch_gemv_t<T, BITS, 1>(s, o, xm, ldx, m, qa, bias);
    else if (m == 2) launch_gemv_t<T, BITS, 2>(s, o, xm, ldx, m, qa, bias);
    else if (m <= 4) launch_gemv_t<T, BITS, 4>(s, o, xm, ldx, m, qa, bias);
    else launch_gemv_t<T, BITS, 8>(s, o, xm, ldx, m, qa, bias);
  }
}

template <typename T>
void launch_mma(cudaStream_t s, const DevRows& out, const void* x, int64_t ldx, const QuantArgs& qa,
                const TensorView* bias) {
  const size_t esz = sizeof(T);
  for (int64_t m0 = 0; m0 < out.rows; m0 += 16) {
    const int m = static_cast<int>(std::min<int64_t>(16, out.rows - m0));
    T* o = reinterpret_cast<T*>(static_cast<uint8_t*>(out.data) + m0 * out.ld * esz);
    const T* xm = reinterpret_cast<const T*>(static_cast<const uint8_t*>(x) + m0 * ldx * esz);
    const unsigned grid = static_cast<unsigned>(ceil_div(qa.n, 16));
    const void* b = bias ? bias->data : nullptr;
    const DType bt = bias ? bias->dtype : DType::kF32;
    if (m <= 8) mma_kernel<T, 1><<<grid, kMmaWarps * 32, 0, s>>>(o, out.ld, xm, ldx, m, qa, b, bt);
    else mma_kernel<T, 2><<<grid, kMmaWarps * 32, 0, s>>>(o, out.ld, xm, ldx, m, qa, b, bt);
    NB_CUDA_LAUNCHED();
  }
}

template <typename T>
void linear_quant(CudaBackend& be, const DevRows& out, const DevRows& x, const CudaQuantWeight& w,
                  const TensorView* bias) {
  cudaStream_t s = be.stream();
  const QuantArgs qa = quant_args(w);
  // x as [M, kp] with 16-byte aligned rows: used in place when the layout is the identity and aligned.
  const void* xp = x.data;
  int64_t ldx = x.ld;
  const bool aligned = reinterpret_cast<uintptr_t>(x.data) % 16 == 0 && (x.ld * sizeof(T)) % 16 == 0;
  if (!w.identity || !aligned) {
    T* buf = static_cast<T*>(be.scratch(1, static_cast<size_t>(x.rows * w.kp) * sizeof(T)));
    gather_kernel<T><<<blocks_for(x.rows * w.kp, 256), 256, 0, s>>>(buf, w.kp, static_cast<const T*>(x.data), x.ld,
                                                                     w.in, w.src_col, x.rows);
    NB_CUDA_LAUNCHED();
    xp = buf;
    ldx = w.kp;
  }
  LinearPath path = be.linear_path();
  if (w.tiled) {
    if (path == LinearPath::kAuto) path = x.rows <= kTiledMaxM ? LinearPath::kTiled : LinearPath::kDequantGemm;
    if (path != LinearPath::kDequantGemm) {
      tiled_gemm(be, out, xp, ldx, x.rows, w, bias);
      return;
    }
    T* wd = static_cast<T*>(be.scratch(2, static_cast<size_t>(w.out * w.kp) * sizeof(T)));
    tiled_dequantize(be, wd, w);
    gemm(be, out, xp, ldx, wd, w.kp, x.dtype);
    if (bias) launch_add_bias(s, out, bias->data, bias->dtype);
    return;
  }
  if (path == LinearPath::kAuto) {
    if (x.rows > kAutoGemvM) path = LinearPath::kDequantGemm;
    else if (x.rows == 1 || !w.mma_ok) path = LinearPath::kGemv;
    else path = LinearPath::kMma;
  }
  if (path == LinearPath::kMma && !w.mma_ok) path = LinearPath::kGemv;
  if (path == LinearPath::kMma) {
    launch_mma<T>(s, out, xp, ldx, qa, bias);
    return;
  }
  if (path == LinearPath::kGemv) {
    if (w.bits == 4) launch_gemv<T, 4>(s, out, xp, ldx, qa, bias);
    else launch_gemv<T, 8>(s, out, xp, ldx, qa, bias);
    return;
  }
  T* wd = static_cast<T*>(be.scratch(2, static_cast<size_t>(w.out * w.kp) * sizeof(T)));
  const int64_t work = w.out * (w.kp / kChunk);
  if (w.bits == 4) dequant4_kernel<T><<<blocks_for(work * 4, 256), 256, 0, s>>>(wd, qa);
  else dequant_kernel<T, 8><<<blocks_for(work, 256), 256, 0, s>>>(wd, qa);
  NB_CUDA_LAUNCHED();
  gemm(be, out, xp, ldx, wd, w.kp, x.dtype);
  if (bias) launch_add_bias(s, out, bias->data, bias->dtype);
}

}  // namespace

void CudaBackend::linear(TensorView out, TensorView x, const ops::PackedWeight& w, const TensorView* bias) {
  const DevRows o = dev_rows(out), xr = dev_rows(x);
  NB_CHECK(xr.cols == w.in && o.cols == w.out && o.rows == xr.rows, "linear: out %s, x %s, weight [%lld, %lld]",
           shape_to_string(out.shape).c_str(), shape_to_string(x.shape).c_str(), static_cast<long long>(w.out),
           static_cast<long long>(w.in));
  NB_CHECK(x.dtype == act_ && out.dtype == act_, "linear: x %s and out %s must be the activation dtype %s",
           dtype_name(x.dtype), dtype_name(out.dtype), dtype_name(act_));
  NB_CHECK(!bias || bias->numel() == w.out, "linear: bias has %lld elements, expected %lld",
           static_cast<long long>(bias->numel()), static_cast<long long>(w.out));
  if (xr.rows == 0) return;
  if (auto* q = dynamic_cast<const CudaQuantWeight*>(&w)) {
    if (act_ == DType::kBF16) linear_quant<__nv_bfloat16>(*this, o, xr, *q, bias);
    else linear_quant<__half>(*this, o, xr, *q, bias);
    return;
  }
  auto* d = dynamic_cast<const CudaDenseWeight*>(&w);
  NB_CHECK(d != nullptr, "linear: the weight was not packed by the CUDA backend");
  gemm(*this, o, xr.data, xr.ld, d->data, d->in, act_);
  if (bias) launch_add_bias(stream_, o, bias->data, bias->dtype);
}

}  // namespace nb::cuda
