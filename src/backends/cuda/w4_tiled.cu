// The tiled INT4 layout and its W4A16 kernels: the fast path of linear for INT4 weights whose
// 64-column tiles each lie in one quantization group (group size a multiple of 64, channel-wise, or
// act-order groups padded so). Everything else keeps the chunked layout of linear.cu.
//
// Layout (CudaQuantWeight with tiled = true), made on the device from the chunked byte stream
// (row-major [out, kp / 2], natural column order, unsigned nibbles u = q + 8):
// - Output rows form tiles of 16 (n-tiles; the last one padded with u = 8, i.e. zero weights);
//   packed columns form tiles of 64 (k-tiles). Tile (nt, kt) is 512 contiguous bytes, tiles in
//   row-major order [n-tile][k-tile], so one warp streaming the k-tiles of an n-tile reads one
//   contiguous run of memory.
// - Inside a tile, lane l = 4 g + t of a warp owns 16 bytes = 4 words, word s (0..3) holding the
//   eight nibbles it needs for mma.sync m16n8k16 k-step s (A = weights, rows n, 16 k positions):
//     bits  0- 3 / 16-19: row g,     columns c, c + 1   (fragment register a0)
//     bits  4- 7 / 20-23: row g + 8, columns c, c + 1   (a1)
//     bits  8-11 / 24-27: row g,     columns c + 2, c + 3 (a2)
//     bits 12-15 / 28-31: row g + 8, columns c + 2, c + 3 (a3)
//   with c = 64 kt + 16 t + 4 s. So the k positions 2t, 2t+1 / 2t+8, 2t+9 of step s are the packed
//   columns c, c+1 / c+2, c+3: a permutation of k inside the tile, applied to x too (thread t loads
//   x columns 16t .. 16t+15 of the tile with two 16-byte loads and uses words 2s, 2s+1 at step s).
// - (w >> 4p) & 0x000F000F | magic turns register p into two bf16 (f16) values 128 + u (1024 + u)
//   exactly; subtracting 128 + offset and multiplying by the scale, both in the activation dtype,
//   rounds once: the reference's (q - z) * s rounded to the scale dtype when that is the activation
//   dtype (a scale of another dtype is rounded to the activation dtype at packing).
// - scales: activation dtype, [n-tile][group][16] with entry 2j = row j, 2j + 1 = row j + 8, so
//   lane g loads (s_g, s_g+8) as one 32-bit word. offsets (asymmetric only): the same layout,
//   holding 128 + 8 + z (bf16) or 1024 + 8 + z (f16); symmetric weights use the constant 136 / 1032.
// - group of k-tile kt: tile_group[kt] when act-order regrouped, else kt / tiles_per_group.
//
// Kernel (tiled_kernel<T, MT>): a block of kw warps owns one n-tile; warp w walks a contiguous range
// of k-tiles (split K), keeping U tiles of codes and scales in flight; each k-tile is four
// k-steps of MT mma.sync per warp (MT = m-tiles of 8 rows of x, 1, 2, 4 or 8: M <= 64 per launch).
// Partial 16 x 8MT tiles of the warps are summed in shared memory. Larger M loops over 64-row
// slices; beyond kTiledMaxM the caller dequantizes into a scratch and calls cuBLAS instead.
#include <algorithm>

#include "backends/cuda/cuda_common.cuh"
#include "backends/cuda/mma.cuh"
#include "backends/cuda/w4_tiled.h"

namespace nb::cuda {

namespace {

constexpr int kTileK = 64;
constexpr int kUnroll = 4;

struct TiledArgs {
  const uint4* codes;
  const uint32_t* scales;
  const uint32_t* offs;
  const int32_t* tile_group;
  int64_t n, ktiles, groups;
  int tiles_per_group;
  int tpg_shift;  // log2(tiles_per_group) when a power of two, else -1
};

__device__ __forceinline__ uint4 load_stream(const uint4* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// Threads per block for MT m-tiles: kw * MT <= 32 (the shared partial tile) and at most 16 warps.
template <int MT> constexpr int max_warps() { return MT >= 8 ? 4 : (MT >= 4 ? 8 : 16); }

__device__ __forceinline__ int64_t tile_group_of(const TiledArgs& w, int64_t kt) {
  if (w.tile_group) return w.tile_group[kt];
  if (w.tpg_shift >= 0) return kt >> w.tpg_shift;
  return static_cast<int64_t>(static_cast<uint32_t>(kt) / static_cast<uint32_t>(w.tiles_per_group));
}

template <typename T, int MT, bool ASYM>
__global__ void __launch_bounds__(max_warps<MT>() * 32) tiled_kernel(T* out, int64_t ldo, const T* x, int64_t ldx,
                                                                    int m_count, TiledArgs w, const void* bias,
                                                                    DType bias_dtype) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, kw = blockDim.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t nt = blockIdx.x;
  const int64_t per = (w.ktiles + kw - 1) / kw;
  const int64_t k0 = warp * per, k1 = min(w.ktiles, k0 + per);
  const uint4* codes = w.codes + nt * w.ktiles * 32 + lane;
  const uint32_t* scales = w.scales + nt * w.groups * 8 + g;
  const uint32_t* offs = ASYM ? w.offs + nt * w.groups * 8 + g : nullptr;
  float c[MT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.f;
  // x rows of this thread (one per m-tile), column 16 t of the tile.
  const T* xrow[MT];
  bool xok[MT];
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    const int m = i * 8 + g;
    xok[i] = m < m_count;
    xrow[i] = x + static_cast<int64_t>(xok[i] ? m : 0) * ldx + 16 * t;
  }
  for (int64_t kt = k0; kt < k1; kt += kUnroll) {
    uint4 q[kUnroll];
    uint32_t sw[kUnroll], ow[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (kt + u < k1) {
        q[u] = load_stream(codes + (kt + u) * 32);
        const int64_t grp = tile_group_of(w, kt + u);
        sw[u] = __ldg(scales + grp * 8);
        if constexpr (ASYM) ow[u] = __ldg(offs + grp * 8);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (kt + u >= k1) break;
      const uint32_t s0 = __byte_perm(sw[u], 0, 0x1010), s1 = __byte_perm(sw[u], 0, 0x3232);
      uint32_t b0 = Mma<T>::kSymBase, b1 = Mma<T>::kSymBase;
      if constexpr (ASYM) {
        b0 = __byte_perm(ow[u], 0, 0x1010);
        b1 = __byte_perm(ow[u], 0, 0x3232);
      }
      const uint32_t words[4] = {q[u].x, q[u].y, q[u].z, q[u].w};
      uint32_t a[4][4];
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const uint32_t v = words[s];
        a[s][0] = Mma<T>::sub_mul((v & 0x000F000Fu) | Mma<T>::kMagic, b0, s0);
        a[s][1] = Mma<T>::sub_mul(((v >> 4) & 0x000F000Fu) | Mma<T>::kMagic, b1, s1);
        a[s][2] = Mma<T>::sub_mul(((v >> 8) & 0x000F000Fu) | Mma<T>::kMagic, b0, s0);
        a[s][3] = Mma<T>::sub_mul(((v >> 12) & 0x000F000Fu) | Mma<T>::kMagic, b1, s1);
      }
      const int64_t col = (kt + u) * kTileK;
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        uint4 x0 = make_uint4(0, 0, 0, 0), x1 = x0;
        if (xok[i]) {
          x0 = __ldg(reinterpret_cast<const uint4*>(xrow[i] + col));
          x1 = __ldg(reinterpret_cast<const uint4*>(xrow[i] + col + 8));
        }
        Mma<T>::mma(c[i], a[0], x0.x, x0.y);
        Mma<T>::mma(c[i], a[1], x0.z, x0.w);
        Mma<T>::mma(c[i], a[2], x1.x, x1.y);
        Mma<T>::mma(c[i], a[3], x1.z, x1.w);
      }
    }
  }
  // c[i]: (row g, m = 8i + 2t, 2t+1) and (row g + 8, same m).
  const int64_t n0 = nt * 16;
  auto store = [&](int r, int m, float v) {
    const int64_t n = n0 + r;
    if (m < m_count && n < w.n) out[m * ldo + n] = from_f<T>(v + (bias ? load_f(bias, bias_dtype, n) : 0.f));
  };
  if (kw == 1) {
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      store(g, 8 * i + 2 * t, c[i][0]);
      store(g, 8 * i + 2 * t + 1, c[i][1]);
      store(g + 8, 8 * i + 2 * t, c[i][2]);
      store(g + 8, 8 * i + 2 * t + 1, c[i][3]);
    }
    return;
  }
  constexpr int kCols = 8 * MT;
  __shared__ float part[32 * 16 * 8];  // [kw][16][kCols], kw * MT <= 32
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    float* p = part + warp * 16 * kCols;
    p[g * kCols + 8 * i + 2 * t] = c[i][0];
    p[g * kCols + 8 * i + 2 * t + 1] = c[i][1];
    p[(g + 8) * kCols + 8 * i + 2 * t] = c[i][2];
    p[(g + 8) * kCols + 8 * i + 2 * t + 1] = c[i][3];
  }
  __syncthreads();
  const int cols = min(kCols, m_count);
  for (int e = threadIdx.x; e < 16 * cols; e += blockDim.x) {
    const int r = e % 16, m = e / 16;
    float v = 0.f;
    for (int k = 0; k < kw; ++k) v += part[(k * 16 + r) * kCols + m];
    store(r, m, v);
  }
}

// Chunked byte stream [n, kp / 2] -> tiles. One thread per (n-tile, k-tile, lane).
// flip: the source holds canonical signed nibbles (q), not u = q + 8: flip every nibble's sign bit.
__global__ void retile_kernel(uint4* dst, const uint8_t* src, int64_t n, int64_t kp, int64_t ktiles, int64_t ntiles,
                              bool flip) {
  const int64_t total = ntiles * ktiles * 32;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int lane = static_cast<int>(i % 32), g = lane / 4, t = lane % 4;
    const int64_t kt = (i / 32) % ktiles, nt = i / 32 / ktiles;
    const int64_t r0 = nt * 16 + g, r1 = r0 + 8;
    const int64_t byte0 = (kt * kTileK + 16 * t) / 2;  // 16 columns = 8 bytes
    uint64_t w0 = 0x8888888888888888ull, w1 = w0;      // padding rows: u = 8, weight 0
    const uint64_t x = flip ? 0x8888888888888888ull : 0;
    if (r0 < n) w0 = *reinterpret_cast<const uint64_t*>(src + r0 * (kp / 2) + byte0) ^ x;
    if (r1 < n) w1 = *reinterpret_cast<const uint64_t*>(src + r1 * (kp / 2) + byte0) ^ x;
    auto nib = [](uint64_t w, int col) { return static_cast<uint32_t>((w >> (4 * col)) & 0xF); };
    uint32_t out[4];
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const int c = 4 * s;
      out[s] = nib(w0, c) | nib(w1, c) << 4 | nib(w0, c + 2) << 8 | nib(w1, c + 2) << 12 | nib(w0, c + 1) << 16 |
               nib(w1, c + 1) << 20 | nib(w0, c + 3) << 24 | nib(w1, c + 3) << 28;
    }
    dst[i] = make_uint4(out[0], out[1], out[2], out[3]);
  }
}

// Tiles -> dequantized [n, kp] in T (for cuBLAS at large M). One thread per (n-tile, k-tile, lane):
// rows g and g + 8, columns 16 t .. 16 t + 15 of the tile.
template <typename T, bool ASYM>
__global__ void tiled_dequant_kernel(T* wd, TiledArgs w, int64_t kp, int64_t ntiles) {
  const int64_t total = ntiles * w.ktiles * 32;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int lane = static_cast<int>(i % 32), g = lane / 4, t = lane % 4;
    const int64_t kt = (i / 32) % w.ktiles, nt = i / 32 / w.ktiles;
    const uint4 q = w.codes[i];
    const int64_t grp = w.tile_group ? w.tile_group[kt] : kt / w.tiles_per_group;
    const uint32_t sw = w.scales[(nt * w.groups + grp) * 8 + g];
    const uint32_t s0 = __byte_perm(sw, 0, 0x1010), s1 = __byte_perm(sw, 0, 0x3232);
    uint32_t b0 = Mma<T>::kSymBase, b1 = Mma<T>::kSymBase;
    if constexpr (ASYM) {
      const uint32_t ow = w.offs[(nt * w.groups + grp) * 8 + g];
      b0 = __byte_perm(ow, 0, 0x1010);
      b1 = __byte_perm(ow, 0, 0x3232);
    }
    const uint32_t words[4] = {q.x, q.y, q.z, q.w};
    uint32_t row0[8], row1[8];  // 16 columns of rows g and g + 8 as T pairs
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      const uint32_t v = words[s];
      const uint32_t a0 = Mma<T>::sub_mul((v & 0x000F000Fu) | Mma<T>::kMagic, b0, s0);          // row g: c, c+1
      const uint32_t a1 = Mma<T>::sub_mul(((v >> 4) & 0x000F000Fu) | Mma<T>::kMagic, b1, s1);   // row g+8: c, c+1
      const uint32_t a2 = Mma<T>::sub_mul(((v >> 8) & 0x000F000Fu) | Mma<T>::kMagic, b0, s0);   // row g: c+2, c+3
      const uint32_t a3 = Mma<T>::sub_mul(((v >> 12) & 0x000F000Fu) | Mma<T>::kMagic, b1, s1);  // row g+8: c+2, c+3
      row0[2 * s] = a0;
      row0[2 * s + 1] = a2;
      row1[2 * s] = a1;
      row1[2 * s + 1] = a3;
    }
    const int64_t r0 = nt * 16 + g, r1 = r0 + 8, col = kt * kTileK + 16 * t;
    if (r0 < w.n) {
      uint4* d = reinterpret_cast<uint4*>(wd + r0 * kp + col);
      d[0] = make_uint4(row0[0], row0[1], row0[2], row0[3]);
      d[1] = make_uint4(row0[4], row0[5], row0[6], row0[7]);
    }
    if (r1 < w.n) {
      uint4* d = reinterpret_cast<uint4*>(wd + r1 * kp + col);
      d[0] = make_uint4(row1[0], row1[1], row1[2], row1[3]);
      d[1] = make_uint4(row1[4], row1[5], row1[6], row1[7]);
    }
  }
}

int grid_blocks(int64_t total, int threads) {
  return static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, 8 * 65536));
}

TiledArgs tiled_args(const CudaQuantWeight& w) {
  return TiledArgs{static_cast<const uint4*>(w.codes), w.tscales, w.toffs, w.tile_group,
                   w.out, w.ktiles, w.groups, w.tiles_per_group, w.tpg_shift};
}

// Split K over kw warps of one block until there are enough warps in flight to cover the memory
// latency (~24 per SM) while every warp keeps at least 4 k-tiles.
template <typename T, int MT>
void launch_mt(cudaStream_t s, T* out, int64_t ldo, const T* x, int64_t ldx, int m, const CudaQuantWeight& w,
               const void* bias, DType bias_dtype) {
  const int64_t ntiles = (w.out + 15) / 16;
  int kw = 1;
  while (kw < max_warps<MT>() && ntiles * kw < 132 * 24 && w.ktiles >= 4 * kw) kw *= 2;
  const TiledArgs a = tiled_args(w);
  if (w.toffs) tiled_kernel<T, MT, true><<<static_cast<unsigned>(ntiles), kw * 32, 0, s>>>(out, ldo, x, ldx, m, a, bias, bias_dtype);
  else tiled_kernel<T, MT, false><<<static_cast<unsigned>(ntiles), kw * 32, 0, s>>>(out, ldo, x, ldx, m, a, bias, bias_dtype);
  NB_CUDA_LAUNCHED();
}

template <typename T>
void tiled_gemm_t(cudaStream_t s, const DevRows& out, const void* xv, int64_t ldx, int64_t rows,
                  const CudaQuantWeight& w, const void* bias, DType bias_dtype) {
  for (int64_t m0 = 0; m0 < rows; m0 += 64) {
    const int m = static_cast<int>(std::min<int64_t>(64, rows - m0));
    T* o = static_cast<T*>(out.data) + m0 * out.ld;
    const T* x = static_cast<const T*>(xv) + m0 * ldx;
    if (m <= 8) launch_mt<T, 1>(s, o, out.ld, x, ldx, m, w, bias, bias_dtype);
    else if (m <= 16) launch_mt<T, 2>(s, o, out.ld, x, ldx, m, w, bias, bias_dtype);
    else if (m <= 32) launch_mt<T, 4>(s, o, out.ld, x, ldx, m, w, bias, bias_dtype);
    else launch_mt<T, 8>(s, o, out.ld, x, ldx, m, w, bias, bias_dtype);
  }
}

}  // namespace

bool tiled_eligible(const CudaQuantWeight& p, const std::vector<int32_t>& chunk_group) {
  if (p.bits != 4 || !p.mma_ok || p.kp % kTileK != 0) return false;
  if (chunk_group.empty()) return p.groups == 1 || p.chunks_per_group % 2 == 0;
  for (size_t c = 0; c + 1 < chunk_group.size(); c += 2)
    if (chunk_group[c] != chunk_group[c + 1]) return false;
  return true;
}

void pack_tiled(CudaBackend& be, CudaQuantWeight& p, const uint8_t* chunked_codes, bool canonical,
                const std::vector<float>& scales, const std::vector<float>& offsets,
                const std::vector<int32_t>& chunk_group) {
  const DType act = be.activation_dtype();
  const int64_t ntiles = (p.out + 15) / 16;
  p.tiled = true;
  p.ktiles = p.kp / kTileK;
  p.tiles_per_group = static_cast<int>(std::max<int64_t>(1, p.chunks_per_group / 2));
  if (p.groups == 1) p.tiles_per_group = static_cast<int>(p.ktiles);
  for (int b = 0; b < 31; ++b)
    if ((1 << b) == p.tiles_per_group) p.tpg_shift = b;
  // Codes: upload the chunked stream to a temporary buffer and retile on the device.
  const size_t tile_bytes = static_cast<size_t>(ntiles * p.ktiles) * 512;
  const size_t code_bytes = static_cast<size_t>(p.out * p.kp / 2);
  void* src = be.alloc(code_bytes);  // freed below: nothing of the load stays behind
  be.upload(src, chunked_codes, code_bytes);
  p.codes = be.alloc(tile_bytes);
  retile_kernel<<<grid_blocks(ntiles * p.ktiles * 32, 256), 256, 0, be.stream()>>>(
      static_cast<uint4*>(p.codes), static_cast<const uint8_t*>(src), p.out, p.kp, p.ktiles, ntiles, canonical);
  NB_CUDA_LAUNCHED();
  // Scales and offsets: [n-tile][group][16] in the activation dtype.
  const size_t entries = static_cast<size_t>(ntiles * p.groups * 16);
  std::vector<uint16_t> ts(entries, 0), to;
  if (!offsets.empty()) to.assign(entries, 0);
  const float base = act == DType::kBF16 ? 128.f : 1024.f;
  auto to_act = [&](float v) { return act == DType::kBF16 ? float_to_bf16(v) : float_to_fp16(v); };
  for (int64_t n = 0; n < ntiles * 16; ++n) {
    const int64_t nt = n / 16, r = n % 16, pos = r < 8 ? 2 * r : 2 * (r - 8) + 1;
    for (int64_t gi = 0; gi < p.groups; ++gi) {
      const size_t e = static_cast<size_t>((nt * p.groups + gi) * 16 + pos);
      const size_t src_i = static_cast<size_t>(n * p.groups + gi);
      ts[e] = n < p.out ? to_act(scales[src_i]) : 0;
      if (!to.empty()) to[e] = to_act(base + (n < p.out ? offsets[src_i] : 8.f));
    }
  }
  p.tscales = static_cast<uint32_t*>(be.arena_alloc(entries * 2));
  be.upload(p.tscales, ts.data(), entries * 2);
  if (!to.empty()) {
    p.toffs = static_cast<uint32_t*>(be.arena_alloc(entries * 2));
    be.upload(p.toffs, to.data(), entries * 2);
  }
  if (!chunk_group.empty()) {
    std::vector<int32_t> tg(static_cast<size_t>(p.ktiles));
    for (size_t i = 0; i < tg.size(); ++i) tg[i] = chunk_group[2 * i];
    p.tile_group = static_cast<int32_t*>(be.arena_alloc(tg.size() * 4));
    be.upload(p.tile_group, tg.data(), tg.size() * 4);
  }
  be.synchronize();
  be.dealloc(src);
  p.device_bytes = tile_bytes + entries * 2 * (to.empty() ? 1 : 2) + static_cast<size_t>(p.ktiles) * 4;
}

void tiled_gemm(CudaBackend& be, const DevRows& out, const void* x, int64_t ldx, int64_t rows,
                const CudaQuantWeight& w, const TensorView* bias) {
  const void* b = bias ? bias->data : nullptr;
  const DType bt = bias ? bias->dtype : DType::kF32;
  if (be.activation_dtype() == DType::kBF16) tiled_gemm_t<__nv_bfloat16>(be.stream(), out, x, ldx, rows, w, b, bt);
  else tiled_gemm_t<__half>(be.stream(), out, x, ldx, rows, w, b, bt);
}

void tiled_dequantize(CudaBackend& be, void* wd, const CudaQuantWeight& w) {
  const int64_t ntiles = (w.out + 15) / 16;
  const TiledArgs a = tiled_args(w);
  const int blocks = grid_blocks(ntiles * w.ktiles * 32, 256);
  cudaStream_t s = be.stream();
  if (be.activation_dtype() == DType::kBF16) {
    if (w.toffs) tiled_dequant_kernel<__nv_bfloat16, true><<<blocks, 256, 0, s>>>(static_cast<__nv_bfloat16*>(wd), a, w.kp, ntiles);
    else tiled_dequant_kernel<__nv_bfloat16, false><<<blocks, 256, 0, s>>>(static_cast<__nv_bfloat16*>(wd), a, w.kp, ntiles);
  } else {
    if (w.toffs) tiled_dequant_kernel<__half, true><<<blocks, 256, 0, s>>>(static_cast<__half*>(wd), a, w.kp, ntiles);
    else tiled_dequant_kernel<__half, false><<<blocks, 256, 0, s>>>(static_cast<__half*>(wd), a, w.kp, ntiles);
  }
  NB_CUDA_LAUNCHED();
}

}  // namespace nb::cuda
