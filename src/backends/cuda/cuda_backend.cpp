// The CUDA backend: device selection, memory, scratch, and the dispatch of the simple ops to their
// launchers (elementwise.cu, attention.cu). linear.cu and lora.cu hold the matrix products.
#include "backends/cuda/cuda_backend.h"

#include <algorithm>

#include "backends/cpu/ref/ref_ops.h"
#include "backends/cuda/cuda_internal.h"

namespace nb {

namespace cuda {

DevRows dev_rows(const TensorView& t) {
  DevRows r;
  r.data = t.data;
  r.dtype = t.dtype;
  NB_CHECK(t.rank() >= 1, "a rank-0 tensor has no rows");
  NB_CHECK(t.dtype == DType::kF32 || t.dtype == DType::kBF16 || t.dtype == DType::kF16,
           "CUDA ops take F32/BF16/F16 tensors, got %s", dtype_name(t.dtype));
  r.cols = t.dim(-1);
  r.rows = t.rank() == 1 ? 1 : (r.cols ? t.numel() / r.cols : t.dim(0));
  r.ld = r.cols;
  if (!t.strides.empty() && !t.is_contiguous()) {
    NB_CHECK(t.rank() == 2 && t.strides[1] == 1, "CUDA ops take contiguous tensors or 2-D row-strided views, got %s",
             shape_to_string(t.shape).c_str());
    r.ld = t.strides[0];
  }
  return r;
}

CudaBackend::CudaBackend(int device, DType activation) : device_(device), act_(activation) {
  NB_CUDA_CHECK(cudaSetDevice(device_));
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device_) == cudaSuccess) device_name_ = prop.name;
  NB_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  NB_CUBLAS_CHECK(cublasCreate(&cublas_));
  NB_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  // A fixed cuBLAS workspace: cuBLAS then never allocates inside a recorded graph.
  cublas_workspace_ = alloc(kCublasWorkspace);
  NB_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspace));
}

CudaBackend::~CudaBackend() {
  cudaStreamSynchronize(stream_);
  for (int i = 0; i < kScratchSlots; ++i)
    if (scratch_ptr_[i]) cudaFree(scratch_ptr_[i]);
  if (cublas_) cublasDestroy(cublas_);
  if (cublas_workspace_) cudaFree(cublas_workspace_);
  for (void* p : arena_slabs_) cudaFree(p);
  if (stream_) cudaStreamDestroy(stream_);
}

void* CudaBackend::try_alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 256));
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear it: the caller reports the failure and the context stays usable
    return nullptr;
  }
  NB_CUDA_CHECK(err);
  return p;
}

void* CudaBackend::alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 256));
  if (err == cudaErrorMemoryAllocation) {
    size_t free_b = 0, total_b = 0;
    cudaGetLastError();
    cudaMemGetInfo(&free_b, &total_b);
    NB_CHECK(false, "out of GPU memory: %.2f GiB requested, %.2f GiB free of %.2f GiB on %s; use a smaller "
             "--max-model-len / KV cache or a GPU with more memory", bytes / 1073741824.0, free_b / 1073741824.0,
             total_b / 1073741824.0, device_name_.c_str());
  }
  NB_CUDA_CHECK(err);
  return p;
}

void CudaBackend::dealloc(void* ptr) {
  if (!ptr) return;
  NB_CUDA_CHECK(cudaStreamSynchronize(stream_));  // a kernel in flight may still read it
  NB_CUDA_CHECK(cudaFree(ptr));
}

void CudaBackend::upload(void* dst, const void* src, size_t bytes) {
  NB_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  NB_CUDA_CHECK(cudaStreamSynchronize(stream_));  // src may be freed when we return
}

void CudaBackend::download(void* dst, const void* src, size_t bytes) {
  NB_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  NB_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::synchronize() { NB_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void* CudaBackend::scratch(int index, size_t bytes) {
  NB_CHECK(index >= 0 && index < kScratchSlots, "scratch slot %d", index);
  if (bytes > scratch_bytes_[index]) {
    if (scratch_ptr_[index]) dealloc(scratch_ptr_[index]);
    NB_CHECK(!capturing_, "scratch slot %d must grow to %zu bytes while recording a graph (warm up first)", index, bytes);
    const size_t grown = std::max(bytes, scratch_bytes_[index] * 3 / 2);
    scratch_ptr_[index] = alloc(grown);
    scratch_bytes_[index] = grown;
    ++epoch_;
  }
  return scratch_ptr_[index];
}

bool CudaBackend::device_memory(size_t* free_bytes, size_t* total_bytes) const {
  return cudaMemGetInfo(free_bytes, total_bytes) == cudaSuccess;
}

void* CudaBackend::arena_alloc(size_t bytes) {
  constexpr size_t kSlab = size_t{64} << 20, kAlign = 256;
  bytes = (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
  if (bytes > kSlab / 4) {  // large: its own allocation, still owned (and freed) by the arena
    arena_slabs_.push_back(alloc(bytes));
    return arena_slabs_.back();
  }
  if (!arena_slab_ || arena_used_ + bytes > kSlab) {
    arena_slab_ = alloc(kSlab);
    arena_slabs_.push_back(arena_slab_);
    arena_used_ = 0;
  }
  void* p = static_cast<uint8_t*>(arena_slab_) + arena_used_;
  arena_used_ += bytes;
  return p;
}

void CudaBackend::upload_async(void* dst, const void* src, size_t bytes) {
  NB_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
}

// ---- graphs ---------------------------------------------------------------------------------------

namespace {
class CudaGraph : public ops::Graph {
 public:
  CudaGraph(cudaGraphExec_t exec, cudaStream_t stream) : exec_(exec), stream_(stream) {}
  ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
  void launch() override { NB_CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

 private:
  cudaGraphExec_t exec_;
  cudaStream_t stream_;
};
}  // namespace

void CudaBackend::begin_capture() {
  NB_CHECK(!capturing_, "begin_capture: already recording");
  NB_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
}

std::unique_ptr<ops::Graph> CudaBackend::end_capture() {
  NB_CHECK(capturing_, "end_capture without begin_capture");
  capturing_ = false;
  cudaGraph_t graph = nullptr;
  cudaError_t err = cudaStreamEndCapture(stream_, &graph);
  if (err != cudaSuccess || !graph) {
    cudaGetLastError();
    return nullptr;
  }
  cudaGraphExec_t exec = nullptr;
  err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return std::make_unique<CudaGraph>(exec, stream_);
}

// ---- simple ops -----------------------------------------------------------------------------------

void CudaBackend::embedding(TensorView out, TensorView table, const int32_t* ids, int64_t num_tokens) {
  const DevRows o = dev_rows(out), t = dev_rows(table);
  NB_CHECK(o.rows >= num_tokens && o.cols == t.cols, "embedding: out %s, table %s, %lld tokens",
           shape_to_string(out.shape).c_str(), shape_to_string(table.shape).c_str(), static_cast<long long>(num_tokens));
  launch_embedding(stream_, o, t, ids, num_tokens);
}

void CudaBackend::rms_norm(TensorView out, TensorView x, TensorView weight, float eps) {
  const DevRows o = dev_rows(out), xr = dev_rows(x);
  NB_CHECK(o.rows == xr.rows && o.cols == xr.cols && weight.numel() == xr.cols, "rms_norm: out %s, x %s, weight %s",
           shape_to_string(out.shape).c_str(), shape_to_string(x.shape).c_str(), shape_to_string(weight.shape).c_str());
  launch_rms_norm(stream_, o, xr, weight.data, weight.dtype, eps);
}

void CudaBackend::add(TensorView out, TensorView a, TensorView b) {
  const DevRows o = dev_rows(out), ar = dev_rows(a), br = dev_rows(b);
  NB_CHECK(o.rows == ar.rows && o.cols == ar.cols && br.rows == ar.rows && br.cols == ar.cols, "add: %s = %s + %s",
           shape_to_string(out.shape).c_str(), shape_to_string(a.shape).c_str(), shape_to_string(b.shape).c_str());
  launch_binary(stream_, 0, o, ar, br);
}

void CudaBackend::mul(TensorView out, TensorView a, TensorView b) {
  const DevRows o = dev_rows(out), ar = dev_rows(a), br = dev_rows(b);
  const bool row_scalar = br.cols == 1 && br.rows == ar.rows && ar.cols != 1;
  NB_CHECK(o.rows == ar.rows && o.cols == ar.cols && br.rows == ar.rows && (row_scalar || br.cols == ar.cols),
           "mul: %s = %s * %s", shape_to_string(out.shape).c_str(), shape_to_string(a.shape).c_str(),
           shape_to_string(b.shape).c_str());
  launch_binary(stream_, row_scalar ? 2 : 1, o, ar, br);
}

void CudaBackend::silu_mul(TensorView out, TensorView gate, TensorView up) {
  const DevRows o = dev_rows(out), g = dev_rows(gate), u = dev_rows(up);
  NB_CHECK(o.rows == g.rows && o.cols == g.cols && u.rows == g.rows && u.cols == g.cols, "silu_mul: %s, %s, %s",
           shape_to_string(out.shape).c_str(), shape_to_string(gate.shape).c_str(), shape_to_string(up.shape).c_str());
  launch_binary(stream_, 3, o, g, u);
}

void CudaBackend::cast(TensorView out, TensorView in) {
  const DevRows o = dev_rows(out), i = dev_rows(in);
  NB_CHECK(o.rows == i.rows && o.cols == i.cols, "cast: %s <- %s", shape_to_string(out.shape).c_str(),
           shape_to_string(in.shape).c_str());
  if (o.dtype == i.dtype) {  // a plain copy: the copy engine path runs at full bandwidth
    const size_t esz = dtype_bytes(o.dtype, 1);
    NB_CUDA_CHECK(cudaMemcpy2DAsync(o.data, static_cast<size_t>(o.ld) * esz, i.data, static_cast<size_t>(i.ld) * esz,
                                    static_cast<size_t>(o.cols) * esz, static_cast<size_t>(o.rows),
                                    cudaMemcpyDeviceToDevice, stream_));
    return;
  }
  launch_binary(stream_, 4, o, i, i);
}

void CudaBackend::rope(TensorView x, const int32_t* positions, const ops::RopeArgs& args) {
  const bool strided = x.rank() == 3 && !x.is_contiguous() && x.strides.size() == 3 && x.strides[2] == 1;
  NB_CHECK(x.rank() == 3 && (x.is_contiguous() || strided), "rope: x must be [T, heads, d], contiguous or with strides {s0, s1, 1}, got %s",
           shape_to_string(x.shape).c_str());
  NB_CHECK(args.rotary_dim > 0 && args.rotary_dim % 2 == 0 && args.rotary_dim <= x.dim(2),
           "rope: rotary_dim %d, head_dim %lld", args.rotary_dim, static_cast<long long>(x.dim(2)));
  NB_CHECK(x.dtype == DType::kF32 || x.dtype == DType::kBF16 || x.dtype == DType::kF16, "rope: dtype %s", dtype_name(x.dtype));
  const int64_t stride_t = strided ? x.strides[0] : x.dim(1) * x.dim(2), stride_h = strided ? x.strides[1] : x.dim(2);
  launch_rope(stream_, x.data, x.dtype, x.dim(0), x.dim(1), stride_t, stride_h, positions, args);
}

// ---- mixture of experts: the CUDA kernels come with the CUDA MoE issue -------------------------------

namespace {
const char* kNoCudaMoe =
    "mixture-of-experts layers are not implemented on the CUDA backend yet: run this model with --device cpu";
}  // namespace

Result<std::unique_ptr<ops::PackedWeight>> CudaBackend::pack_quantized_experts(const ops::QuantWeightView&, int64_t) {
  return unsupported(kNoCudaMoe);
}
Result<std::unique_ptr<ops::PackedWeight>> CudaBackend::pack_dense_experts(const TensorView&) {
  return unsupported(kNoCudaMoe);
}
void CudaBackend::moe_route(TensorView, TensorView, TensorView, const ops::MoeRouteArgs&) { NB_CHECK(false, "%s", kNoCudaMoe); }
void CudaBackend::moe_dispatch(int32_t*, int32_t*, int32_t*, const int32_t*, const int32_t*, int64_t, int, int) {
  NB_CHECK(false, "%s", kNoCudaMoe);
}
void CudaBackend::expert_linear(TensorView, TensorView, const ops::PackedWeight&, const ops::ExpertRows&) {
  NB_CHECK(false, "%s", kNoCudaMoe);
}
void CudaBackend::moe_combine(TensorView, TensorView, TensorView, const TensorView*, const TensorView*) {
  NB_CHECK(false, "%s", kNoCudaMoe);
}

void CudaBackend::kv_store(TensorView k_cache, TensorView v_cache, TensorView k, TensorView v,
                           const int32_t* slot_mapping) {
  NB_CHECK(k.rank() == 3 && v.rank() == 3 && k_cache.rank() == 3 && v_cache.rank() == 3 && k.dim(0) == v.dim(0),
           "kv_store: k %s, v %s, caches %s %s", shape_to_string(k.shape).c_str(), shape_to_string(v.shape).c_str(),
           shape_to_string(k_cache.shape).c_str(), shape_to_string(v_cache.shape).c_str());
  NB_CHECK(k.dim(1) == k_cache.dim(1) && k.dim(2) == k_cache.dim(2) && v.dim(1) == v_cache.dim(1) &&
               v.dim(2) == v_cache.dim(2) && k_cache.dim(0) == v_cache.dim(0) && k.is_contiguous() && v.is_contiguous(),
           "kv_store: head shapes differ from the cache");
  // As [slots, heads * d] and [T, heads * d].
  auto flat = [](const TensorView& t) {
    DevRows r = dev_rows(t);
    r.rows = t.dim(0);
    r.cols = r.ld = t.dim(1) * t.dim(2);
    return r;
  };
  launch_kv_store(stream_, flat(k_cache), flat(v_cache), flat(k), flat(v), slot_mapping, k.dim(0));
}

void CudaBackend::attention(TensorView out, TensorView q, TensorView k_cache, TensorView v_cache,
                            const ops::AttentionArgs& args) {
  launch_attention(*this, out, q, k_cache, v_cache, args);
}

void CudaBackend::sample(int32_t* out_ids, TensorView logits, const std::vector<ops::SamplingParams>& params,
                         uint64_t step) {
  const DevRows l = dev_rows(logits);
  NB_CHECK(params.size() == static_cast<size_t>(l.rows) || params.size() == 1, "sample: %zu params for %lld rows",
           params.size(), static_cast<long long>(l.rows));
  // Greedy rows: argmax on the device. Others: the row goes to the host and the CPU sampler draws
  // (the same code as the reference, so a seed gives the same token on every backend).
  int32_t* ids = static_cast<int32_t*>(scratch(0, static_cast<size_t>(l.rows) * 4));
  launch_argmax(stream_, ids, l);
  download(out_ids, ids, static_cast<size_t>(l.rows) * 4);
  std::vector<float> row;
  for (int64_t r = 0; r < l.rows; ++r) {
    const ops::SamplingParams& p = params[params.size() == 1 ? 0 : static_cast<size_t>(r)];
    if (!(p.temperature > 0.f)) continue;
    row.resize(static_cast<size_t>(l.cols));
    float* f32 = static_cast<float*>(scratch(1, row.size() * 4));
    DevRows src = l, dst{f32, DType::kF32, 1, l.cols, l.cols};
    src.data = static_cast<uint8_t*>(l.data) + dtype_bytes(l.dtype, static_cast<size_t>(r * l.ld));
    src.rows = 1;
    launch_binary(stream_, 4, dst, src, src);
    download(row.data(), f32, row.size() * 4);
    out_ids[r] = cpu::ref::sample_row(row.data(), l.cols, p, step, true);
  }
}

}  // namespace cuda

Result<std::unique_ptr<ops::Backend>> make_cuda_backend(int device, DType activation) {
  if (activation != DType::kBF16 && activation != DType::kF16)
    return unsupported(strformat("CUDA backend: activations must be BF16 or F16, got %s", dtype_name(activation)));
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error state of the runtime
    return unsupported(strformat("no usable CUDA device: cudaGetDeviceCount returned %d (%s)", static_cast<int>(err),
                                 cudaGetErrorString(err)));
  }
  if (device < 0 || device >= count)
    return not_found(strformat("no usable CUDA device: device %d requested, %d present", device, count));
  cudaDeviceProp prop{};
  err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess)
    return unsupported(strformat("no usable CUDA device: cudaGetDeviceProperties(%d) returned %d (%s)", device,
                                 static_cast<int>(err), cudaGetErrorString(err)));
  if (prop.major < 8)
    return unsupported(strformat("CUDA device %d (%s) has compute capability %d.%d; nibble needs 8.0 or newer", device,
                                 prop.name, prop.major, prop.minor));
  return std::unique_ptr<ops::Backend>(std::make_unique<cuda::CudaBackend>(device, activation));
}

}  // namespace nb
