// LoRA shrink/expand, grouped per adapter (SGMV style): the host groups the batch's rows by slot
// (from host_row_slot) and launches one grid covering every adapter present; block (a, ...) works only
// on the rows of adapter a, so no row pays for an adapter it does not use and nothing is padded to a
// common rank. The adapter descriptors (factor pointers, rank, scaling) travel as a kernel parameter,
// so no per-call device upload is needed; more than kMaxAdapters adapters take several launches.
//
// shrink: tmp [M, >= max_rank] (F32) = x [M, K] @ A^T, A: [rank, K]; grid (adapter, rank r, row block):
//   the block reduces the dot product of A[r] with each of its rows of that adapter.
// expand: y [M, N] += scaling * tmp[:, :rank] @ B^T, B: [N, rank]; grid (adapter, column block, row block):
//   thread n accumulates tmp[m, :rank] . B[n, :rank] in F32 and adds it to y (one rounding, as PEFT).
// Rows whose slot is -1, out of range, or names a rank-0 slot are untouched.
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

}  // namespace

void CudaBackend::lora_shrink(TensorView tmp, TensorView x, const ops::LoraArgs& args) {
  const DevRows t = dev_rows(tmp), xr = dev_rows(x);
  NB_CHECK(t.rows == xr.rows && t.cols >= args.max_rank && t.dtype == DType::kF32, "lora_shrink: tmp %s %s, x %s",
           dtype_name(tmp.dtype), shape_to_string(tmp.shape).c_str(), shape_to_string(x.shape).c_str());
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
  int max_rank = 0;
  for (const AdapterSet& set : adapter_sets(args, yr.rows, &max_rank)) {
    const dim3 grid(static_cast<unsigned>(set.count), static_cast<unsigned>(ceil_div(yr.cols, kThreads)),
                    static_cast<unsigned>(ceil_div(yr.rows, kRowBlock)));
    expand_kernel<<<grid, kThreads, 0, stream_>>>(yr, t, args.row_slot, set);
    NB_CUDA_LAUNCHED();
  }
}

}  // namespace nb::cuda
