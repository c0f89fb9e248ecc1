// Row-wise and elementwise kernels: embedding, rms_norm, add/mul/silu_mul/cast, rope, kv_store,
// bias, argmax. Dtypes are read at run time (F32/BF16/F16): these kernels are memory-bound and the
// dtype branch is uniform, so one instantiation serves every dtype and keeps compile time low.
#include <cmath>

#include "backends/cuda/cuda_common.cuh"

namespace nb::cuda {

namespace {

constexpr int kThreads = 256;

// One block row per token; columns strided over the block.
__global__ void embedding_kernel(DevRows out, DevRows table, const int32_t* ids) {
  const int64_t t = blockIdx.x;
  const int64_t id = ids[t];
  if (id < 0 || id >= table.rows) __trap();  // out-of-range token id: programming error upstream
  for (int64_t c = threadIdx.x; c < out.cols; c += blockDim.x) rows_set(out, t, c, rows_get(table, id, c));
}

// One block per row; statistics in F32 as torch computes them: w * (x * rsqrt(mean(x^2) + eps)).
__global__ void rms_norm_kernel(DevRows out, DevRows x, const void* w, DType w_dtype, float eps) {
  const int64_t r = blockIdx.x;
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x) {
    const float v = rows_get(x, r, c);
    ss += v * v;
  }
  ss = block_sum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(x.cols) + eps);
  // out may alias x: every thread reads element c before writing it, and only its own elements.
  for (int64_t c = threadIdx.x; c < x.cols; c += blockDim.x)
    rows_set(out, r, c, load_f(w, w_dtype, c) * (rows_get(x, r, c) * inv));
}

// rms_norm for BF16/F16 rows of at most kNormVecs * 8 * kThreads columns (a multiple of 8), 16-byte
// aligned: every thread keeps its columns in registers, so x is read once (one memory round trip).
constexpr int kNormVecs = 4;
template <typename T>
__global__ void __launch_bounds__(kThreads) rms_norm_vec_kernel(DevRows out, DevRows x, const void* w, DType w_dtype,
                                                                float eps) {
  const int64_t r = blockIdx.x;
  const T* xr = static_cast<const T*>(x.data) + r * x.ld;
  T* orow = static_cast<T*>(out.data) + r * out.ld;
  float v[kNormVecs][8];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < kNormVecs; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * kThreads + threadIdx.x) * 8;
    if (c < x.cols) {
      const uint4 raw = *reinterpret_cast<const uint4*>(xr + c);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        v[i][j] = to_f(e[j]);
        ss += v[i][j] * v[i][j];
      }
    }
  }
  ss = block_sum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(x.cols) + eps);
#pragma unroll
  for (int i = 0; i < kNormVecs; ++i) {
    const int64_t c = (static_cast<int64_t>(i) * kThreads + threadIdx.x) * 8;
    if (c < x.cols) {
      T e[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) e[j] = from_f<T>(load_f(w, w_dtype, c + j) * (v[i][j] * inv));
      *reinterpret_cast<uint4*>(orow + c) = *reinterpret_cast<const uint4*>(e);
    }
  }
}

__global__ void binary_kernel(int op, DevRows out, DevRows a, DevRows b) {
  const int64_t total = out.rows * out.cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / out.cols, c = i % out.cols;
    const float x = rows_get(a, r, c);
    float y;
    switch (op) {
      case 0: y = x + rows_get(b, r, c); break;
      case 1: y = x * rows_get(b, r, c); break;
      case 2: y = x * rows_get(b, r, 0); break;
      case 3: y = x / (1.0f + expf(-x)) * rows_get(b, r, c); break;
      default: y = x; break;
    }
    rows_set(out, r, c, y);
  }
}

// Grid: (tokens, heads); threads over the rotary pairs. cos/sin in F32 as transformers computes them
// (float(p) * inv_freq, then cos/sin, then times attention_factor); each product rounded, no FMA.
__global__ void rope_kernel(void* x, DType dtype, int64_t stride_t, int64_t stride_h, const int32_t* positions,
                            const float* inv_freq, int rotary_dim, float factor, bool neox) {
  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int half = rotary_dim / 2;
  const int64_t base = t * stride_t + h * stride_h;
  const float p = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float f = __fmul_rn(p, inv_freq[i]);
    const float cs = __fmul_rn(cosf(f), factor), sn = __fmul_rn(sinf(f), factor);
    const int64_t i1 = base + (neox ? i : 2 * i), i2 = base + (neox ? i + half : 2 * i + 1);
    const float x1 = load_f(x, dtype, i1), x2 = load_f(x, dtype, i2);
    store_f(x, dtype, i1, __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn)));
    store_f(x, dtype, i2, __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn)));
  }
}

__global__ void kv_store_kernel(DevRows kc, DevRows vc, DevRows k, DevRows v, const int32_t* slot_mapping) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;  // padding row
  if (slot >= kc.rows) __trap();
  for (int64_t c = threadIdx.x; c < k.cols; c += blockDim.x) rows_set(kc, slot, c, rows_get(k, t, c));
  for (int64_t c = threadIdx.x; c < v.cols; c += blockDim.x) rows_set(vc, slot, c, rows_get(v, t, c));
}

__global__ void add_bias_kernel(DevRows out, const void* bias, DType bias_dtype) {
  const int64_t total = out.rows * out.cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / out.cols, c = i % out.cols;
    rows_set(out, r, c, rows_get(out, r, c) + load_f(bias, bias_dtype, c));
  }
}

// True when (v, i) beats (bv, bi): larger value, then lower index; NaN never wins.
__device__ __forceinline__ bool better(float v, int64_t i, float bv, int64_t bi) {
  if (isnan(v)) return false;
  if (bi < 0 || isnan(bv)) return true;
  return v > bv || (v == bv && i < bi);
}

__global__ void argmax_kernel(int32_t* ids, DevRows logits) {
  const int64_t r = blockIdx.x;
  float bv = NAN;
  int64_t bi = -1;
  for (int64_t c = threadIdx.x; c < logits.cols; c += blockDim.x) {
    const float v = rows_get(logits, r, c);
    if (better(v, c, bv, bi)) { bv = v; bi = c; }
  }
  __shared__ float sv[kThreads];
  __shared__ int64_t si[kThreads];
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const float v = sv[threadIdx.x + s];
      const int64_t i = si[threadIdx.x + s];
      if (i >= 0 && better(v, i, sv[threadIdx.x], si[threadIdx.x])) {
        sv[threadIdx.x] = v;
        si[threadIdx.x] = i;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) ids[r] = static_cast<int32_t>(si[0] < 0 ? 0 : si[0]);
}

int grid_for(int64_t total) { return static_cast<int>(std::min<int64_t>(ceil_div(total, kThreads), 65536)); }

}  // namespace

void launch_embedding(cudaStream_t s, const DevRows& out, const DevRows& table, const int32_t* ids, int64_t n) {
  if (n <= 0) return;
  embedding_kernel<<<static_cast<unsigned>(n), kThreads, 0, s>>>(out, table, ids);
  NB_CUDA_LAUNCHED();
}

void launch_rms_norm(cudaStream_t s, const DevRows& out, const DevRows& x, const void* w, DType w_dtype, float eps) {
  if (x.rows <= 0) return;
  const bool vec = x.dtype == out.dtype && (x.dtype == DType::kBF16 || x.dtype == DType::kF16) && x.cols % 8 == 0 &&
                   x.cols <= int64_t{kNormVecs} * 8 * kThreads && x.ld % 8 == 0 && out.ld % 8 == 0 &&
                   reinterpret_cast<uintptr_t>(x.data) % 16 == 0 && reinterpret_cast<uintptr_t>(out.data) % 16 == 0;
  if (vec && x.dtype == DType::kBF16)
    rms_norm_vec_kernel<__nv_bfloat16><<<static_cast<unsigned>(x.rows), kThreads, 0, s>>>(out, x, w, w_dtype, eps);
  else if (vec)
    rms_norm_vec_kernel<__half><<<static_cast<unsigned>(x.rows), kThreads, 0, s>>>(out, x, w, w_dtype, eps);
  else
    rms_norm_kernel<<<static_cast<unsigned>(x.rows), kThreads, 0, s>>>(out, x, w, w_dtype, eps);
  NB_CUDA_LAUNCHED();
}

void launch_binary(cudaStream_t s, int op, const DevRows& out, const DevRows& a, const DevRows& b) {
  const int64_t total = out.rows * out.cols;
  if (total <= 0) return;
  binary_kernel<<<grid_for(total), kThreads, 0, s>>>(op, out, a, b);
  NB_CUDA_LAUNCHED();
}

void launch_rope(cudaStream_t s, void* x, DType dtype, int64_t tokens, int64_t heads, int64_t stride_t,
                 int64_t stride_h, const int32_t* positions, const ops::RopeArgs& args) {
  if (tokens <= 0 || heads <= 0) return;
  const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(heads));
  const int threads = std::min(128, std::max(32, args.rotary_dim / 2));
  rope_kernel<<<grid, threads, 0, s>>>(x, dtype, stride_t, stride_h, positions, args.inv_freq, args.rotary_dim,
                                       args.attention_factor, args.neox);
  NB_CUDA_LAUNCHED();
}

void launch_kv_store(cudaStream_t s, const DevRows& kc, const DevRows& vc, const DevRows& k, const DevRows& v,
                     const int32_t* slot_mapping, int64_t tokens) {
  if (tokens <= 0) return;
  kv_store_kernel<<<static_cast<unsigned>(tokens), kThreads, 0, s>>>(kc, vc, k, v, slot_mapping);
  NB_CUDA_LAUNCHED();
}

void launch_add_bias(cudaStream_t s, const DevRows& out, const void* bias, DType bias_dtype) {
  const int64_t total = out.rows * out.cols;
  if (total <= 0) return;
  add_bias_kernel<<<grid_for(total), kThreads, 0, s>>>(out, bias, bias_dtype);
  NB_CUDA_LAUNCHED();
}

void launch_argmax(cudaStream_t s, int32_t* ids, const DevRows& logits) {
  if (logits.rows <= 0) return;
  argmax_kernel<<<static_cast<unsigned>(logits.rows), kThreads, 0, s>>>(ids, logits);
  NB_CUDA_LAUNCHED();
}

}  // namespace nb::cuda
