// Paged attention on the CUDA backend (attention.cu): the flash-decoding kernel (max_query_len <= 4,
// GQA rows packed per kv head, split-KV + merge), the tensor-core prefill kernel (max_query_len > 4)
// and the fallback kernel, each against the CPU reference (make_cpu_backend(true)) over a sweep:
// 1..40 sequences, contexts 1..3000 across the 64-key tile, split and block boundaries, GQA ratios
// 1/4/5/8, head dims 64/80/96/128 (flash) and 48/256/d != dv (fallback), BF16 and F16, sliding
// windows, block sizes 16/32/12, prompts of 1..600 tokens, chunked prefill (queries at positions
// ctx - ql .. ctx - 1), mixed batches, max_context_len as an upper bound, and a captured CUDA graph
// replayed while the contexts grow. Method and tolerance: cuda_ops_test.cpp (1e-2 relative L2 over
// the output; additionally 3e-2 on every (row, head) vector so that one wrong row cannot hide in a
// large output).
//
// Block-table entries past a sequence's context, and blocks wholly before a sliding window, point to
// a poison block full of NaN: a kernel that reads keys it must not read returns NaN and fails.
#include "cuda_fixture.h"

#include <cstdlib>
#include <sstream>
#include <string>

#ifdef NIBBLE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "backends/cuda/cuda_internal.h"
#endif

namespace nb::cuda_test {
namespace {

struct Spec {
  std::vector<int> ql, ctx;  // per sequence: query rows and context length (including the queries)
  int heads = 8, kv_heads = 2, d = 128, dv = 0;  // dv 0: = d
  int window = 0, block_size = 16;
  DType dtype = DType::kBF16;
  float q_scale = 2.f;       // larger = more peaked softmax
  int max_context_len = -1;  // -1: the largest context (what the engine passes); otherwise as given
  int max_query_len = -1;    // -1: the largest query length; otherwise as given (0 = unset)
  int spare_blocks = 0;      // real table entries past every context (the graph test grows into them)

  int vdim() const { return dv ? dv : d; }
  std::string str() const {
    std::ostringstream o;
    o << dtype_name(dtype) << " heads " << heads << "/" << kv_heads << " d " << d << "/" << vdim() << " window "
      << window << " bs " << block_size << " seqs " << ql.size() << " (ql,ctx):";
    for (size_t i = 0; i < ql.size() && i < 12; ++i) o << " (" << ql[i] << "," << ctx[i] << ")";
    if (ql.size() > 12) o << " ...";
    o << " max_ctx " << max_context_len << " max_q " << max_query_len;
    return o.str();
  }
};

class CudaAttention : public CudaOps {
 protected:
  struct Problem {
    Spec s;
    int max_blocks = 0;
    int64_t rows = 0, slots = 0;
    std::vector<int32_t> qstart, ctx, tables;
    std::vector<float> q, kc, vc;
    DeviceTensor gq, gkc, gvc, gqs, gctx, gtab;
  };

  Problem make(const Spec& s) {
    Problem p;
    p.s = s;
    const int S = static_cast<int>(s.ql.size()), bs = s.block_size, d = s.d, dv = s.vdim();
    NB_CHECK(s.ctx.size() == s.ql.size() && S > 0, "spec");
    p.qstart = {0};
    for (int i = 0; i < S; ++i) {
      NB_CHECK(s.ql[i] >= 0 && s.ql[i] <= s.ctx[i], "spec: ql %d ctx %d", s.ql[i], s.ctx[i]);
      p.qstart.push_back(p.qstart.back() + s.ql[i]);
      p.max_blocks = std::max(p.max_blocks, (s.ctx[i] + bs - 1) / bs);
    }
    p.max_blocks = std::max(p.max_blocks + s.spare_blocks, 1);
    p.rows = p.qstart.back();
    p.ctx.assign(s.ctx.begin(), s.ctx.end());
    // Physical blocks: a random permutation of S * max_blocks real ones; the last one is poison.
    const int real = S * p.max_blocks, poison = real;
    std::vector<int32_t> perm(static_cast<size_t>(real));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng_);
    p.tables = perm;
    for (int i = 0; i < S; ++i) {
      const int used = (s.ctx[i] + bs - 1) / bs;
      const int first_pos = s.ctx[i] - s.ql[i];
      const int lo = s.window > 0 ? std::max(0, first_pos - s.window + 1) : 0;
      for (int b = 0; b < p.max_blocks; ++b) {
        const bool past = b >= used + s.spare_blocks;
        const bool before_window = s.spare_blocks == 0 && (b + 1) * bs <= lo;
        if (past || before_window) p.tables[static_cast<size_t>(i * p.max_blocks + b)] = poison;
      }
    }
    p.slots = static_cast<int64_t>(real + 1) * bs;
    p.q = rnd(static_cast<size_t>(p.rows * s.heads * d), s.q_scale);
    p.kc = rnd(static_cast<size_t>(p.slots * s.kv_heads * d));
    p.vc = rnd(static_cast<size_t>(p.slots * s.kv_heads * dv));
    for (int64_t i = static_cast<int64_t>(poison) * bs * s.kv_heads * d; i < p.slots * s.kv_heads * d; ++i)
      p.kc[static_cast<size_t>(i)] = NAN;
    for (int64_t i = static_cast<int64_t>(poison) * bs * s.kv_heads * dv; i < p.slots * s.kv_heads * dv; ++i)
      p.vc[static_cast<size_t>(i)] = NAN;
    p.gq = up(p.q, {std::max<int64_t>(p.rows, 1), s.heads, d}, s.dtype);
    p.gkc = up(p.kc, {p.slots, s.kv_heads, d}, s.dtype);
    p.gvc = up(p.vc, {p.slots, s.kv_heads, dv}, s.dtype);
    p.gqs = up_i32(p.qstart);
    p.gctx = up_i32(p.ctx);
    p.gtab = up_i32(p.tables);
    return p;
  }

  ops::AttentionArgs args(const Problem& p, bool device) const {
    const Spec& s = p.s;
    ops::AttentionArgs a;
    a.num_seqs = static_cast<int>(s.ql.size());
    a.query_start = device ? p.gqs.buffer.as<int32_t>() : p.qstart.data();
    a.context_lens = device ? p.gctx.buffer.as<int32_t>() : p.ctx.data();
    a.block_tables = device ? p.gtab.buffer.as<int32_t>() : p.tables.data();
    a.max_blocks_per_seq = p.max_blocks;
    a.block_size = s.block_size;
    a.num_heads = s.heads;
    a.num_kv_heads = s.kv_heads;
    a.head_dim = s.d;
    a.v_head_dim = s.vdim();
    a.scale = 1.f / std::sqrt(static_cast<float>(s.d));
    a.sliding_window = s.window;
    a.max_query_len = s.max_query_len >= 0 ? s.max_query_len : *std::max_element(s.ql.begin(), s.ql.end());
    a.max_context_len = s.max_context_len >= 0 ? s.max_context_len : *std::max_element(p.ctx.begin(), p.ctx.end());
    return a;
  }

  DeviceTensor out_tensor(const Problem& p) {
    return ops::make_device_tensor(*gpu_, p.s.dtype, {std::max<int64_t>(p.rows, 1), p.s.heads, p.s.vdim()});
  }

  std::vector<float> run_gpu(const Problem& p, const ops::AttentionArgs* override_args = nullptr) {
    DeviceTensor out = out_tensor(p);
    const ops::AttentionArgs a = override_args ? *override_args : args(p, true);
    TensorView q = p.gq.view(), o = out.view();
    q.shape[0] = o.shape[0] = p.rows;
    gpu_->attention(o, q, p.gkc.view(), p.gvc.view(), a);
    return down(o);
  }

  std::vector<float> reference(const Problem& p) {
    const Spec& s = p.s;
    std::vector<float> ref(static_cast<size_t>(p.rows * s.heads * s.vdim()));
    std::vector<float> q = p.q, kc = p.kc, vc = p.vc;
    cpu_->attention(host(ref, {p.rows, s.heads, s.vdim()}), host(q, {p.rows, s.heads, s.d}),
                    host(kc, {p.slots, s.kv_heads, s.d}), host(vc, {p.slots, s.kv_heads, s.vdim()}), args(p, false));
    return ref;
  }

  // Overall relative L2 error below kTol and every (row, head) vector below 3e-2.
  void expect_close(const std::vector<float>& got, const std::vector<float>& ref, int dv, const std::string& what) {
    const double all = rel_err(got, ref);
    EXPECT_LT(all, kTol) << what << SEED_INFO;
    if (!(all < kTol)) return;
    double worst = 0;
    size_t worst_row = 0;
    for (size_t r = 0; r * static_cast<size_t>(dv) < ref.size(); ++r) {
      double num = 0, den = 0;
      for (size_t c = r * static_cast<size_t>(dv); c < (r + 1) * static_cast<size_t>(dv); ++c) {
        num += (static_cast<double>(got[c]) - ref[c]) * (static_cast<double>(got[c]) - ref[c]);
        den += static_cast<double>(ref[c]) * ref[c];
      }
      const double e = std::sqrt(num / std::max(den, 1e-30));
      if (e > worst) { worst = e; worst_row = r; }
    }
    EXPECT_LT(worst, 3e-2) << what << ": worst (row, head) vector " << worst_row << SEED_INFO;
  }

  void check(const Spec& s, const std::string& what = "") {
    const Problem p = make(s);
    expect_close(run_gpu(p), reference(p), s.vdim(), what + " " + s.str());
  }

  int rand_int(int lo, int hi) { return lo + static_cast<int>(rng_() % static_cast<uint64_t>(hi - lo + 1)); }
};

// ---- decode: one query per sequence -------------------------------------------------------------------

TEST_F(CudaAttention, DecodeSweep) {
  // Contexts on both sides of the 64-key tile, the 16-key block and typical split boundaries.
  const std::vector<int> edges = {1, 2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 257,
                                  511, 512, 513, 1023, 1024, 1025, 2047, 2048, 2049, 3000};
  struct G { int heads, kv_heads, d; };
  for (DType dt : {DType::kBF16, DType::kF16}) {
    for (const G g : {G{2, 2, 64}, G{8, 2, 128}, G{8, 1, 128}, G{16, 2, 64}, G{10, 2, 96}}) {
      for (int seqs : {1, 3, 17, 40}) {
        Spec s;
        s.heads = g.heads;
        s.kv_heads = g.kv_heads;
        s.d = g.d;
        s.dtype = dt;
        for (int i = 0; i < seqs; ++i) {
          s.ql.push_back(1);
          s.ctx.push_back(seqs == 1 ? 3000 : (i < static_cast<int>(edges.size()) && rng_() % 2 ? edges[static_cast<size_t>(i)] : rand_int(1, 3000)));
        }
        check(s, "decode sweep");
      }
    }
    // Every edge context alone (one sequence, so the split count is the largest).
    for (int c : edges) {
      Spec s;
      s.heads = 8;
      s.kv_heads = 2;
      s.d = 128;
      s.dtype = dt;
      s.ql = {1};
      s.ctx = {c};
      s.q_scale = 6.f;
      check(s, "decode edge");
    }
  }
}

TEST_F(CudaAttention, DecodeFewQueriesPerSequence) {
  // max_query_len 2..4 stays on the decode kernel (speculative tokens, tiny chunks); group 8 with 4
  // queries needs two 16-row tiles per kv head.
  for (DType dt : {DType::kBF16, DType::kF16}) {
    for (int kvh : {1, 2}) {
      for (int group : {1, 4, 5, 8}) {
        Spec s;
        s.heads = group * kvh;
        s.kv_heads = kvh;
        s.d = group == 5 ? 80 : 128;
        s.dtype = dt;
        s.ql = {1, 4, 2, 3, 4, 1};
        s.ctx = {1, 4, 70, 700, 2500, 129};
        check(s, "decode few queries");
        s.window = 100;
        check(s, "decode few queries, window");
      }
    }
  }
}

TEST_F(CudaAttention, DecodeSlidingWindow) {
  for (int window : {1, 7, 64, 65, 100, 1000, 5000}) {
    Spec s;
    s.heads = 8;
    s.kv_heads = 2;
    s.d = 128;
    s.window = window;
    s.ql = {1, 1, 1, 1, 1};
    s.ctx = {1, 50, 700, 1500, 3000};
    check(s, "decode window");
  }
}

// ---- prefill ---------------------------------------------------------------------------------------------

TEST_F(CudaAttention, PrefillSweep) {
  struct G { int heads, kv_heads, d; };
  for (DType dt : {DType::kBF16, DType::kF16}) {
    for (const G g : {G{2, 2, 64}, G{8, 2, 128}, G{8, 1, 64}, G{6, 2, 96}, G{10, 2, 80}}) {
      for (int n : {5, 16, 63, 64, 65, 127, 129, 300, 600}) {
        if (n == 600 && g.d != 128) continue;  // the CPU reference is slow; one group takes the longest prompt
        Spec s;
        s.heads = g.heads;
        s.kv_heads = g.kv_heads;
        s.d = g.d;
        s.dtype = dt;
        s.ql = {n};
        s.ctx = {n};
        s.q_scale = 4.f;
        check(s, "prefill");
      }
    }
  }
}

TEST_F(CudaAttention, PrefillMixedBatch) {
  // Sequences of different lengths in one call, fresh prompts and decode rows side by side.
  for (DType dt : {DType::kBF16, DType::kF16}) {
    Spec s;
    s.heads = 8;
    s.kv_heads = 2;
    s.d = 128;
    s.dtype = dt;
    s.ql = {600, 1, 65, 300, 7, 1, 128};
    s.ctx = {600, 1, 65, 300, 7, 2000, 128};
    check(s, "prefill mixed batch");
    s.window = 33;
    check(s, "prefill mixed batch, window");
  }
}

TEST_F(CudaAttention, ChunkedPrefill) {
  // Queries at positions ctx - ql .. ctx - 1 after an existing context.
  for (DType dt : {DType::kBF16, DType::kF16}) {
    for (int group : {1, 4, 8}) {
      Spec s;
      s.heads = 2 * group;
      s.kv_heads = 2;
      s.d = group == 8 ? 64 : 128;
      s.dtype = dt;
      s.ql = {5, 64, 100, 37, 250, 17};
      s.ctx = {700, 1000, 3000, 37 + 512, 251, 18};
      check(s, "chunked prefill");
      s.window = 200;
      check(s, "chunked prefill, window");
    }
  }
}

TEST_F(CudaAttention, PrefillSlidingWindow) {
  for (int window : {1, 5, 63, 64, 65, 256, 4096}) {
    Spec s;
    s.heads = 4;
    s.kv_heads = 2;
    s.d = 64;
    s.window = window;
    s.ql = {600, 70, 9};
    s.ctx = {600, 1000, 9};
    check(s, "prefill window");
  }
}

TEST_F(CudaAttention, PrefillLlamaShapeOneWave) {
  // 32/8 heads, d 128: enough row tiles to fill the GPU, so no split (the direct-output path).
  Spec s;
  s.heads = 32;
  s.kv_heads = 8;
  s.d = 128;
  s.ql = {300};
  s.ctx = {300};
  check(s, "prefill Llama shape");
}

// ---- head dims, block sizes, the fallback ---------------------------------------------------------------

TEST_F(CudaAttention, HeadDimsBlockSizesAndFallback) {
  struct C { int heads, kv_heads, d, dv, bs; };
  // 80/96: flash; 48, 256 and d != dv: the fallback kernel; block sizes 32 and 12 (not a power of two).
  for (const C c : {C{6, 2, 80, 0, 16}, C{6, 3, 96, 0, 32}, C{8, 2, 128, 0, 12}, C{4, 2, 48, 0, 16},
                    C{4, 2, 256, 0, 16}, C{6, 2, 96, 64, 16}, C{8, 8, 64, 0, 8}}) {
    for (DType dt : {DType::kBF16, DType::kF16}) {
      Spec s;
      s.heads = c.heads;
      s.kv_heads = c.kv_heads;
      s.d = c.d;
      s.dv = c.dv;
      s.block_size = c.bs;
      s.dtype = dt;
      s.ql = {1, 1, 1};
      s.ctx = {1, 77, 1300};
      check(s, "decode dims/bs");
      s.ql = {1, 40, 130};
      s.ctx = {1, 77, 130};
      check(s, "prefill dims/bs");
    }
  }
}

TEST_F(CudaAttention, MisalignedViewsUseTheFallback) {
#ifdef NIBBLE_HAVE_CUDA
  // q and out one element past a 16-byte boundary: the flash kernels need 16-byte rows.
  Spec s;
  s.heads = 4;
  s.kv_heads = 2;
  s.d = 64;
  s.ql = {1, 20};
  s.ctx = {50, 20};
  const Problem p = make(s);
  const int64_t n = p.rows * s.heads * s.d;
  DeviceTensor qbuf = ops::make_device_tensor(*gpu_, DType::kBF16, {n + 8});
  DeviceTensor obuf = ops::make_device_tensor(*gpu_, DType::kBF16, {n + 8});
  TensorView q{static_cast<uint16_t*>(qbuf.buffer.data()) + 1, DType::kBF16, {p.rows, s.heads, s.d}, {}, Device::kCuda};
  TensorView o{static_cast<uint16_t*>(obuf.buffer.data()) + 1, DType::kBF16, {p.rows, s.heads, s.d}, {}, Device::kCuda};
  NB_CUDA_CHECK(cudaMemcpy(q.data, p.gq.buffer.data(), static_cast<size_t>(n) * 2, cudaMemcpyDeviceToDevice));
  gpu_->attention(o, q, p.gkc.view(), p.gvc.view(), args(p, true));
  expect_close(down(o), reference(p), s.d, "misaligned " + s.str());
#endif
}

// ---- graph safety ------------------------------------------------------------------------------------------

TEST_F(CudaAttention, MaxContextLenIsAnUpperBound) {
  // The engine captures decode steps with max_context_len = the model's maximum; max_query_len may be
  // unset. The result must not depend on either hint (only the split count does).
  for (const auto& [ql, ctx] : {std::pair<std::vector<int>, std::vector<int>>{{1, 1, 1, 1}, {1, 64, 65, 2000}},
                                {{1, 3, 2}, {10, 300, 3000}},
                                {{200, 1, 70}, {200, 500, 700}}}) {
    Spec s;
    s.heads = 8;
    s.kv_heads = 2;
    s.d = 128;
    s.ql = ql;
    s.ctx = ctx;
    const Problem p = make(s);
    const std::vector<float> ref = reference(p), exact = run_gpu(p);
    expect_close(exact, ref, s.d, "exact hints " + s.str());
    for (int bound : {4096, 32768, 131072}) {
      ops::AttentionArgs a = args(p, true);
      a.max_context_len = bound;
      const std::vector<float> got = run_gpu(p, &a);
      expect_close(got, ref, s.d, "max_context_len " + std::to_string(bound) + " " + s.str());
      EXPECT_LT(rel_err(got, exact), kTol) << "bound " << bound << " vs exact hint" << SEED_INFO;
    }
    ops::AttentionArgs a = args(p, true);
    a.max_query_len = 0;
    a.max_context_len = 0;
    expect_close(run_gpu(p, &a), ref, s.d, "hints unset " + s.str());
  }
}

TEST_F(CudaAttention, CapturedDecodeGraphFollowsGrowingContexts) {
#ifdef NIBBLE_HAVE_CUDA
  // One capture with max_context_len = 4096; the contexts then grow (across tile, block and split
  // boundaries) and every replay must match the reference for the contexts of that moment.
  for (DType dt : {DType::kBF16, DType::kF16}) {
    Spec s;
    s.heads = 8;
    s.kv_heads = 2;
    s.d = 128;
    s.dtype = dt;
    s.ql = {1, 1, 1, 1, 1};
    s.ctx = {1, 63, 64, 300, 1000};
    s.spare_blocks = 2200 / 16;
    s.max_context_len = 4096;
    s.max_query_len = 1;
    Problem p = make(s);
    DeviceTensor out = out_tensor(p);
    const ops::AttentionArgs a = args(p, true);
    gpu_->attention(out.view(), p.gq.view(), p.gkc.view(), p.gvc.view(), a);  // warm-up: scratch, attributes
    gpu_->synchronize();

    cudaStream_t stream = static_cast<cuda::CudaBackend*>(gpu_.get())->stream();
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    gpu_->attention(out.view(), p.gq.view(), p.gkc.view(), p.gvc.view(), a);
    ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess) << "attention is not capturable";
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);

    const std::vector<int32_t> start = p.ctx;
    for (int grow : {0, 1, 65, 700, 2100}) {
      for (size_t i = 0; i < start.size(); ++i) p.ctx[i] = start[i] + grow;
      gpu_->upload(p.gctx.buffer.data(), p.ctx.data(), p.ctx.size() * sizeof(int32_t));
      ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
      gpu_->synchronize();
      expect_close(down(out.view()), reference(p), s.d, "graph replay, contexts +" + std::to_string(grow) + " " + s.str());
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
#endif
}

// ---- the flash kernels against the fallback on Llama-3-8B shapes, and their timings --------------------------

#ifdef NIBBLE_HAVE_CUDA
struct FallbackScope {
  FallbackScope() { setenv("NIBBLE_CUDA_ATTENTION", "fallback", 1); }
  ~FallbackScope() { unsetenv("NIBBLE_CUDA_ATTENTION"); }
};
#endif

TEST_F(CudaAttention, FlashMatchesFallbackOnLlamaShapes) {
#ifdef NIBBLE_HAVE_CUDA
  for (const auto& [ql, ctx] : {std::pair<std::vector<int>, std::vector<int>>{{512}, {512}},
                                {std::vector<int>(32, 1), std::vector<int>(32, 0)}}) {
    Spec s;
    s.heads = 32;
    s.kv_heads = 8;
    s.d = 128;
    s.ql = ql;
    s.ctx = ctx;
    for (int& c : s.ctx)
      if (c == 0) c = rand_int(1, 4000);
    const Problem p = make(s);
    const std::vector<float> flash = run_gpu(p);
    std::vector<float> fallback;
    {
      FallbackScope f;
      fallback = run_gpu(p);
    }
    expect_close(flash, fallback, s.d, "flash vs fallback " + s.str());
  }
#endif
}

TEST_F(CudaAttention, TimingLlama3Shapes) {
#ifdef NIBBLE_HAVE_CUDA
  // Llama-3-8B attention (32 q heads, 8 kv heads, d 128, bf16, block size 16): one layer's kernel
  // time, flash path vs the fallback. Caches filled with a constant byte pattern (timing only).
  cudaStream_t stream = static_cast<cuda::CudaBackend*>(gpu_.get())->stream();
  struct TimingCase { const char* what; int seqs, ql, ctx; };
  for (const TimingCase t : {TimingCase{"prefill 512", 1, 512, 512}, TimingCase{"prefill 4 x 512", 4, 512, 512},
                             TimingCase{"decode b1 ctx 1024", 1, 1, 1024}, TimingCase{"decode b1 ctx 8192", 1, 1, 8192},
                             TimingCase{"decode b8 ctx 1024", 8, 1, 1024}, TimingCase{"decode b32 ctx 1024", 32, 1, 1024},
                             TimingCase{"decode b32 ctx 4096", 32, 1, 4096}, TimingCase{"decode b64 ctx 2048", 64, 1, 2048}}) {
    const int bs = 16, heads = 32, kvh = 8, d = 128;
    const int blocks_per_seq = (t.ctx + bs - 1) / bs;
    const int64_t rows = static_cast<int64_t>(t.seqs) * t.ql, slots = static_cast<int64_t>(t.seqs) * blocks_per_seq * bs;
    std::vector<int32_t> qs = {0}, ctx(static_cast<size_t>(t.seqs), t.ctx), tables(static_cast<size_t>(t.seqs) * blocks_per_seq);
    for (int i = 0; i < t.seqs; ++i) qs.push_back(qs.back() + t.ql);
    std::iota(tables.begin(), tables.end(), 0);
    std::shuffle(tables.begin(), tables.end(), rng_);
    DeviceTensor q = ops::make_device_tensor(*gpu_, DType::kBF16, {rows, heads, d});
    DeviceTensor out = ops::make_device_tensor(*gpu_, DType::kBF16, {rows, heads, d});
    DeviceTensor kc = ops::make_device_tensor(*gpu_, DType::kBF16, {slots, kvh, d});
    DeviceTensor vc = ops::make_device_tensor(*gpu_, DType::kBF16, {slots, kvh, d});
    for (const DeviceTensor* x : {&q, &kc, &vc}) NB_CUDA_CHECK(cudaMemset(x->buffer.data(), 0x3c, x->buffer.bytes()));
    DeviceTensor gqs = up_i32(qs), gctx = up_i32(ctx), gtab = up_i32(tables);
    ops::AttentionArgs a;
    a.num_seqs = t.seqs;
    a.query_start = gqs.buffer.as<int32_t>();
    a.context_lens = gctx.buffer.as<int32_t>();
    a.block_tables = gtab.buffer.as<int32_t>();
    a.max_blocks_per_seq = blocks_per_seq;
    a.block_size = bs;
    a.num_heads = heads;
    a.num_kv_heads = kvh;
    a.head_dim = a.v_head_dim = d;
    a.scale = 1.f / std::sqrt(static_cast<float>(d));
    a.max_query_len = t.ql;
    a.max_context_len = t.ctx;
    auto time_ms = [&] {
      for (int i = 0; i < 3; ++i) gpu_->attention(out.view(), q.view(), kc.view(), vc.view(), a);
      cudaEvent_t e0, e1;
      NB_CUDA_CHECK(cudaEventCreate(&e0));
      NB_CUDA_CHECK(cudaEventCreate(&e1));
      const int iters = 20;
      NB_CUDA_CHECK(cudaEventRecord(e0, stream));
      for (int i = 0; i < iters; ++i) gpu_->attention(out.view(), q.view(), kc.view(), vc.view(), a);
      NB_CUDA_CHECK(cudaEventRecord(e1, stream));
      NB_CUDA_CHECK(cudaEventSynchronize(e1));
      float ms = 0;
      NB_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
      cudaEventDestroy(e0);
      cudaEventDestroy(e1);
      return ms / iters;
    };
    const float flash = time_ms();
    float fallback = 0;
    {
      FallbackScope f;
      fallback = time_ms();
    }
    const double kv_bytes = 2.0 * t.seqs * t.ctx * kvh * d * 2;
    printf("[ timing ] %-22s flash %8.1f us (%6.0f GB/s of K/V)   fallback %8.1f us   x%.1f\n", t.what, flash * 1e3,
           kv_bytes / (flash * 1e-3) / 1e9, fallback * 1e3, fallback / flash);
    RecordProperty(std::string(t.what) + " flash us", std::to_string(flash * 1e3));
    if (std::string(t.what) == "prefill 512") {
      EXPECT_LT(flash, 1.0f) << "Llama-3-8B 512-token prefill, one layer";
    }
  }
#endif
}

}  // namespace
}  // namespace nb::cuda_test
