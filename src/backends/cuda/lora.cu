// LoRA shrink/expand on CUDA, two ways.
//
// BGMV (decode, rows <= kBgmvMaxRows, when nn::Linear keeps a device slot table, args.device_slots):
// every block reads its row's slot from row_slot (device) and that slot's factors from the device
// table, so nothing is planned on the host, nothing is allocated and nothing waits: the launch grid
// depends only on (rows, K or N, max_rank) and a captured CUDA graph stays valid while adapters are
// swapped in slots (the table changes, not the grid). Each row works at its own slot's rank (no
// padding to max_rank); blocks beyond a row's rank, and rows whose slot is -1, out of range or of
// rank 0, return at once.
//   shrink: tmp [M, >= max_rank] (F32) = x [M, K] @ A^T, A: [rank, K]; grid (row, rank block of
//     kShrinkRanks): the block streams its kShrinkRanks rows of A once with 16-byte loads, each x
//     chunk loaded once and reused across those ranks, F32 accumulation, warp then block reduction.
//   expand: y [M, N] += scaling * tmp[:, :rank] @ B^T, B: [N, rank]; grid (column block, row): the
//     block stages tmp[m, :rank] in shared memory; thread n reads B[n, :rank] (16-byte loads when
//     rank is a multiple of 8) and adds the F32 sum into y with one rounding (as PEFT).
//
// SGMV (prefill, or without a device table), grouped per adapter: the host groups the batch's rows by
// slot (from host_row_slot) and launches one grid covering every adapter present; block (a, ...) works
// only on the rows of adapter a, so no row pays for an adapter it does not use and nothing is padded
// to a common rank. The adapter descriptors (factor pointers, rank, scaling) travel as a kernel
// parameter, so no per-call device upload is needed; more than kMaxAdapters adapters take several
// launches.
//   shrink: grid (adapter, rank r, row block): the block reduces the dot product of A[r] with each of
//     its rows of that adapter.
//   expand: grid (adapter, column block, row block): thread n accumulates tmp[m, :rank] . B[n, :rank]
//     in F32 and adds it to y (one rounding, as PEFT).
// Rows whose slot is -1, out of range, or names a rank-0 slot are untouched (tmp and y).
#include <algorithm>

#include "backends/cuda/cuda_common.cuh"

namespace nb::cuda {

namespace {

constexpr int kMaxAdapters = 32;
constexpr int kRowBlock = 64;  // rows of the batch scanned by one block
constexpr int kThreads = 128;

struct Adapter {
  const void* a;
  const void* b;
  int slot, rank;
  float scaling;
};
struct AdapterSet {
  Adapter ad[kMaxAdapters];
  int count;
  DType dtype;  // of A and B
};

__global__ void shrink_kernel(DevRows tmp, DevRows x, const int32_t* row_slot, AdapterSet set) {
  const Adapter& ad = set.ad[blockIdx.x];
  const int r = blockIdx.y;
  if (r >= ad.rank) return;
  const int64_t m_last = (static_cast<int64_t>(blockIdx.z) + 1) * kRowBlock;
  const int64_t m_end = m_last < x.rows ? m_last : x.rows;
  for (int64_t m = static_cast<int64_t>(blockIdx.z) * kRowBlock; m < m_end; ++m) {
    if (row_slot[m] != ad.slot) continue;  // uniform across the block
    float s = 0.f;
    for (int64_t k = threadIdx.x; k < x.cols; k += blockDim.x)
      s += rows_get(x, m, k) * load_f(ad.a, set.dtype, r * x.cols + k);
    s = block_sum(s);
    if (threadIdx.x == 0) rows_set(tmp, m, r, s);
  }
}

__global__ void expand_kernel(DevRows y, DevRows tmp, const int32_t* row_slot, AdapterSet set) {
  const Adapter& ad = set.ad[blockIdx.x];
  const int64_t n = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t m_last = (static_cast<int64_t>(blockIdx.z) + 1) * kRowBlock;
  const int64_t m_end = m_last < y.rows ? m_last : y.rows;
  if (n >= y.cols) return;
  for (int64_t m = static_cast<int64_t>(blockIdx.z) * kRowBlock; m < m_end; ++m) {
    if (row_slot[m] != ad.slot) continue;
    float s = 0.f;
    for (int r = 0; r < ad.rank; ++r) s += rows_get(tmp, m, r) * load_f(ad.b, set.dtype, n * ad.rank + r);
    rows_set(y, m, n, rows_get(y, m, n) + s * ad.scaling);
  }
}

// The adapters used by at least one row, in slot order, split into launch-sized sets.
std::vector<AdapterSet> adapter_sets(const ops::LoraArgs& args, int64_t rows, int* max_rank) {
  NB_CHECK(args.host_row_slot != nullptr, "LoRA on CUDA needs host_row_slot to plan the launch");
  NB_CHECK(args.dtype == DType::kF32 || args.dtype == DType::kBF16 || args.dtype == DType::kF16,
           "LoRA factors must be F32/BF16/F16, got %s", dtype_name(args.dtype));
  std::vector<bool> used(args.slots.size(), false);
  for (int64_t m = 0; m < rows; ++m) {
    const int32_t s = args.host_row_slot[m];
    if (s >= 0 && static_cast<size_t>(s) < args.slots.size()) used[static_cast<size_t>(s)] = true;
  }
  std::vector<AdapterSet> sets;
  *max_rank = 0;
  for (size_t s = 0; s < args.slots.size(); ++s) {
    const ops::LoraFactors& f = args.slots[s];
    if (!used[s] || f.rank <= 0) continue;
    NB_CHECK(f.rank <= args.max_rank && f.a && f.b, "LoRA: slot %zu rank %d exceeds max_rank %d or has no factors", s,
             f.rank, args.max_rank);
    if (sets.empty() || sets.back().count == kMaxAdapters) sets.push_back(AdapterSet{{}, 0, args.dtype});
    sets.back().ad[sets.back().count++] = Adapter{f.a, f.b, static_cast<int>(s), f.rank, f.scaling};
    *max_rank = std::max(*max_rank, f.rank);
  }
  return sets;
}

// ---- BGMV ----------------------------------------------------------------------------------------

constexpr int kBgmvMaxRows = ops::kLoraDecodeMaxRows;
constexpr int kShrinkRanks = 4;  // ranks per shrink block: grid.y = ceil(max_rank / kShrinkRanks)
constexpr int kShrinkThreads = 128;
constexpr int kExpandThreads = 128;
constexpr int kExpandMaxRank = 48 * 1024 / 4;  // tmp row staged in (default-size) shared memory

__device__ __forceinline__ float f32(float v) { return v; }
__device__ __forceinline__ float f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float f32(__half v) { return __half2float(v); }

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// 8 consecutive elements at p (16-byte aligned) as float.
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void load8(const __half* p, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

// The factors of row m's slot, or rank 0 when the row has none (slot -1, out of range, rank 0, or a
// rank above max_rank, which the launch was not sized for).
__device__ __forceinline__ ops::LoraFactors row_factors(const int32_t* row_slot, const ops::LoraFactors* table,
                                                       int num_slots, int max_rank, int64_t m) {
  const int s = row_slot[m];
  ops::LoraFactors f{};
  if (s < 0 || s >= num_slots) return f;
  f = table[s];
  if (f.rank > max_rank || !f.a || !f.b) f.rank = 0;
  return f;
}

// T: activation (x) type; W: factor type.
template <typename T, typename W>
__global__ void __launch_bounds__(kShrinkThreads)
    bgmv_shrink_kernel(DevRows tmp, DevRows x, const int32_t* row_slot, const ops::LoraFactors* table, int num_slots,
                       int max_rank) {
  const int64_t m = blockIdx.x;
  const ops::LoraFactors f = row_factors(row_slot, table, num_slots, max_rank, m);
  const int r0 = static_cast<int>(blockIdx.y) * kShrinkRanks;
  if (r0 >= f.rank) return;  // uniform across the block
  const int nr = min(kShrinkRanks, f.rank - r0);
  const int64_t k_dim = x.cols;
  const T* xr = static_cast<const T*>(x.data) + m * x.ld;
  const W* a = static_cast<const W*>(f.a) + static_cast<int64_t>(r0) * k_dim;  // A rows r0 .. r0 + nr
  float acc[kShrinkRanks] = {};
  if (k_dim % 8 == 0 && aligned16(xr) && aligned16(a)) {  // then every A row is 16-byte aligned too
    const int64_t chunks = k_dim / 8;
#pragma unroll 4  // several chunks' loads in flight per thread (K = 4096: 4 chunks per thread)
    for (int64_t c = threadIdx.x; c < chunks; c += kShrinkThreads) {
      float xv[8];
      load8(xr + c * 8, xv);
#pragma unroll
      for (int j = 0; j < kShrinkRanks; ++j) {
        if (j < nr) {
          float av[8];
          load8(a + j * k_dim + c * 8, av);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[j] = fmaf(xv[e], av[e], acc[j]);
        }
      }
    }
  } else {
    for (int64_t k = threadIdx.x; k < k_dim; k += kShrinkThreads) {
      const float xv = f32(xr[k]);
#pragma unroll
      for (int j = 0; j < kShrinkRanks; ++j)
        if (j < nr) acc[j] = fmaf(xv, f32(a[j * k_dim + k]), acc[j]);
    }
  }
  __shared__ float part[kShrinkThreads / 32][kShrinkRanks];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j < kShrinkRanks; ++j) {
    const float v = warp_sum(acc[j]);
    if (lane == 0) part[warp][j] = v;
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < nr) {
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kShrinkThreads / 32; ++w) sum += part[w][threadIdx.x];
    static_cast<float*>(tmp.data)[m * tmp.ld + r0 + static_cast<int>(threadIdx.x)] = sum;
  }
}

// T: activation (y) type; W: factor type. Dynamic shared memory: max_rank floats.
template <typename T, typename W>
__global__ void __launch_bounds__(kExpandThreads)
    bgmv_expand_kernel(DevRows y, DevRows tmp, const int32_t* row_slot, const ops::LoraFactors* table, int num_slots,
                       int max_rank) {
  extern __shared__ float t[];  // tmp[m, :rank]
  const int64_t m = blockIdx.y;
  const ops::LoraFactors f = row_factors(row_slot, table, num_slots, max_rank, m);
  const int rank = f.rank;
  if (rank <= 0) return;  // uniform across the block
  const float* tr = static_cast<const float*>(tmp.data) + m * tmp.ld;
  for (int r = threadIdx.x; r < rank; r += kExpandThreads) t[r] = tr[r];
  __syncthreads();
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kExpandThreads + threadIdx.x;
  if (n >= y.cols) return;
  const W* b = static_cast<const W*>(f.b) + n * rank;  // B[n, :rank]
  float sum = 0.f;
  if (rank % 8 == 0 && aligned16(f.b)) {  // then every B row is 16-byte aligned
    for (int r = 0; r < rank; r += 8) {
      float bv[8];
      load8(b + r, bv);
#pragma unroll
      for (int e = 0; e < 8; ++e) sum = fmaf(t[r + e], bv[e], sum);
    }
  } else {
    for (int r = 0; r < rank; ++r) sum = fmaf(t[r], f32(b[r]), sum);
  }
  T* yp = static_cast<T*>(y.data) + m * y.ld + n;
  *yp = from_f<T>(to_f<T>(*yp) + sum * f.scaling);
}

// The BGMV path serves this call: a device table, a decode-sized batch, BF16/F16 activations.
bool use_bgmv(const ops::LoraArgs& args, int64_t rows, DType act) {
  return args.device_slots != nullptr && rows > 0 && rows <= kBgmvMaxRows && args.max_rank > 0 &&
         args.max_rank <= kExpandMaxRank && (act == DType::kBF16 || act == DType::kF16) &&
         (args.dtype == DType::kF32 || args.dtype == DType::kBF16 || args.dtype == DType::kF16);
}

template <typename T, typename W>
void launch_bgmv(cudaStream_t s, bool shrink, const DevRows& out, const DevRows& in, const ops::LoraArgs& args) {
  const int num_slots = static_cast<int>(args.slots.size());
  if (shrink) {
    const dim3 grid(static_cast<unsigned>(out.rows), static_cast<unsigned>(ceil_div(args.max_rank, kShrinkRanks)));
    bgmv_shrink_kernel<T, W><<<grid, kShrinkThreads, 0, s>>>(out, in, args.row_slot, args.device_slots, num_slots,
                                                            args.max_rank);
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(out.cols, kExpandThreads)), static_cast<unsigned>(out.rows));
    const size_t smem = static_cast<size_t>(args.max_rank) * sizeof(float);
    bgmv_expand_kernel<T, W><<<grid, kExpandThreads, smem, s>>>(out, in, args.row_slot, args.device_slots, num_slots,
                                                               args.max_rank);
  }
  NB_CUDA_LAUNCHED();
}

// act: the activation dtype (x for shrink, y for expand); out/in: (tmp, x) or (y, tmp).
template <typename T>
void launch_bgmv_act(cudaStream_t s, bool shrink, const DevRows& out, const DevRows& in, const ops::LoraArgs& args) {
  if (args.dtype == DType::kBF16) return launch_bgmv<T, __nv_bfloat16>(s, shrink, out, in, args);
  if (args.dtype == DType::kF16) return launch_bgmv<T, __half>(s, shrink, out, in, args);
  launch_bgmv<T, float>(s, shrink, out, in, args);
}

void launch_bgmv(cudaStream_t s, bool shrink, DType act, const DevRows& out, const DevRows& in,
                 const ops::LoraArgs& args) {
  if (act == DType::kBF16) return launch_bgmv_act<__nv_bfloat16>(s, shrink, out, in, args);
  launch_bgmv_act<__half>(s, shrink, out, in, args);
}

}  // namespace

void CudaBackend::lora_shrink(TensorView tmp, TensorView x, const ops::LoraArgs& args) {
  const DevRows t = dev_rows(tmp), xr = dev_rows(x);
  NB_CHECK(t.rows == xr.rows && t.cols >= args.max_rank && t.dtype == DType::kF32, "lora_shrink: tmp %s %s, x %s",
           dtype_name(tmp.dtype), shape_to_string(tmp.shape).c_str(), shape_to_string(x.shape).c_str());
  if (use_bgmv(args, xr.rows, xr.dtype)) return launch_bgmv(stream_, true, xr.dtype, t, xr, args);
  int max_rank = 0;
  for (const AdapterSet& set : adapter_sets(args, xr.rows, &max_rank)) {
    const dim3 grid(static_cast<unsigned>(set.count), static_cast<unsigned>(max_rank),
                    static_cast<unsigned>(ceil_div(xr.rows, kRowBlock)));
    shrink_kernel<<<grid, kThreads, 0, stream_>>>(t, xr, args.row_slot, set);
    NB_CUDA_LAUNCHED();
  }
}

void CudaBackend::lora_expand(TensorView y, TensorView tmp, const ops::LoraArgs& args) {
  const DevRows yr = dev_rows(y), t = dev_rows(tmp);
  NB_CHECK(t.rows == yr.rows && t.cols >= args.max_rank, "lora_expand: y %s, tmp %s", shape_to_string(y.shape).c_str(),
           shape_to_string(tmp.shape).c_str());
  if (t.dtype == DType::kF32 && use_bgmv(args, yr.rows, yr.dtype)) return launch_bgmv(stream_, false, yr.dtype, yr, t, args);
  int max_rank = 0;
  for (const AdapterSet& set : adapter_sets(args, yr.rows, &max_rank)) {
    const dim3 grid(static_cast<unsigned>(set.count), static_cast<unsigned>(ceil_div(yr.cols, kThreads)),
                    static_cast<unsigned>(ceil_div(yr.rows, kRowBlock)));
    expand_kernel<<<grid, kThreads, 0, stream_>>>(yr, t, args.row_slot, set);
    NB_CUDA_LAUNCHED();
  }
}

}  // namespace nb::cuda
