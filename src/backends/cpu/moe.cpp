// Mixture of experts on the CPU (formats.md §7.3): CpuBackend's MoE methods and their fast path.
//
// An expert stack holds each expert as fast packed weights of packed.h (up to four slices of its
// output rows), so each expert's matrix product is the fast linear kernel itself. expert_linear
// plans the experts that have pairs: x rows are used in place when consecutive (decode: one row per
// expert) and gathered otherwise, results are written in place when their pairs are consecutive and
// scattered otherwise; then one parallel_for runs every (expert, slice) as a serial fast linear.
// Routing shares the reference's per-token code (same ids and weights bit for bit); dispatch is the
// reference's counting sort; combine is vectorised with the reference's F32 order of operations.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backends/cpu/cpu_backend.h"
#include "backends/cpu/fast_ops.h"
#include "backends/cpu/packed.h"
#include "backends/cpu/ref/ref_ops.h"
#include "backends/cpu/rows.h"
#include "backends/cpu/simd.h"
#include "core/thread_pool.h"
#include "ops/quant_weight.h"

namespace nb::cpu {

namespace {

bool f32(const TensorView& t) { return t.dtype == DType::kF32; }

// E fast packed weights (CpuQuantWeight or CpuDenseWeight) of one logical shape [out, in]; each expert
// is packed as `slices` weights of consecutive output rows (slice_rows each, the last one shorter).
class CpuExpertWeight : public ops::PackedWeight {
 public:
  int64_t slice_rows = 0;
  int64_t slices = 1;
  std::vector<std::unique_ptr<ops::PackedWeight>> weights;  // [E * slices]
};

// Experts of at least 2 * kMinSliceRows output rows are packed as up to kMaxSlices slices (of a
// multiple of 16 rows), so that a decode step's few experts still give every thread work (measured,
// E 60 top-4 K 2048 N 1408 INT4 on 16 threads: T = 1 in 127 us with 4 slices, 378 us whole, 125 us
// with 11; the cost is each slice's own INT4 tables, +6% memory at 4 slices with random scales).
constexpr int64_t kMaxSlices = 4;
constexpr int64_t kMinSliceRows = 256;

void set_slices(CpuExpertWeight& p, int64_t out) {
  const int64_t slices = std::clamp<int64_t>(out / kMinSliceRows, 1, kMaxSlices);
  p.slice_rows = slices == 1 ? out : ((out + slices - 1) / slices + 15) / 16 * 16;
  p.slices = (out + p.slice_rows - 1) / p.slice_rows;
}

// ---- expert_linear ---------------------------------------------------------------------------------

// Expert e's pairs sorted_pairs[p0, p0 + n): x rows used in place (F32 and consecutive rows: one
// pair, or a run of consecutive tokens) or gathered into the batch's x buffer; results written in
// place (F32 and consecutive pairs) or into the batch's y buffer and scattered after.
struct ExpertPlan {
  int e = 0;
  int32_t p0 = 0;
  int64_t n = 0;
  bool gather = false, scatter = false;
  int64_t x_off = 0, y_off = 0;  // in the batch buffers
  const float* x = nullptr;
  int64_t ldx = 0;
  float* y = nullptr;
  int64_t ldy = 0;
};

// Gathered rows and results of one batch of experts at most (more experts go in several batches,
// so that a long prefill does not hold P * (K + N) floats).
constexpr int64_t kBatchFloats = int64_t{8} << 20;  // 32 MiB
// Gathers and scatters at least this many floats are threaded.
constexpr int64_t kParallelCopyFloats = int64_t{1} << 16;
// An expert with more pairs than this is split into blocks of rows (each at least half of it, so
// every block still takes the GEMM path, and W tiles are dequantized once per block). Measured with
// every token's first choice on one expert (E 60 top-4, T 512, 16 threads): 32 ms, 57 ms unsplit.
constexpr int64_t kTaskRows = 256;

// One unit of work: rows [r0, r0 + rows) of one expert's pairs against one slice of its output rows.
struct ExpertTask {
  int32_t plan = 0;
  int32_t slice = 0;
  int64_t r0 = 0, rows = 0;
};

void fast_expert_linear(TensorView out, TensorView x, const CpuExpertWeight& w, const ops::ExpertRows& rows) {
  const Rows o = as_rows(out), xr = as_rows(x);
  const int64_t k_dim = w.in, n_dim = w.out;
  std::vector<ExpertPlan> plan;
  for (int e = 0; e < rows.num_experts; ++e) {
    const int32_t p0 = rows.expert_offsets[e], p1 = rows.expert_offsets[e + 1];
    if (p0 == p1) continue;
    const int32_t* pairs = rows.sorted_pairs + p0;
    ExpertPlan pl;
    pl.e = e;
    pl.p0 = p0;
    pl.n = p1 - p0;
    const int64_t r0 = ref::expert_x_row(rows, pairs[0]);
    bool x_in_place = xr.dtype == DType::kF32, o_in_place = o.dtype == DType::kF32;
    for (int64_t i = 1; i < pl.n && (x_in_place || o_in_place); ++i) {
      x_in_place = x_in_place && ref::expert_x_row(rows, pairs[i]) == r0 + i;
      o_in_place = o_in_place && pairs[i] == pairs[0] + i;
    }
    pl.gather = !x_in_place;
    pl.scatter = !o_in_place;
    if (x_in_place) pl.x = xr.row<float>(r0), pl.ldx = xr.ld;
    if (o_in_place) pl.y = o.row<float>(pairs[0]), pl.ldy = o.ld;
    plan.push_back(pl);
  }
  ThreadPool& pool = ThreadPool::global();
  thread_local std::vector<float> xbuf, ybuf;
  std::vector<ExpertTask> tasks;
  for (size_t b0 = 0; b0 < plan.size();) {
    // The batch [b0, b1): whole experts while their buffers fit (at least one expert).
    size_t b1 = b0;
    int64_t xn = 0, yn = 0;
    while (b1 < plan.size()) {
      ExpertPlan& pl = plan[b1];
      const int64_t dx = pl.gather ? pl.n * k_dim : 0, dy = pl.scatter ? pl.n * n_dim : 0;
      if (b1 > b0 && xn + yn + dx + dy > kBatchFloats) break;
      pl.x_off = xn, pl.y_off = yn;
      xn += dx, yn += dy;
      ++b1;
    }
    xbuf.resize(static_cast<size_t>(xn));
    ybuf.resize(static_cast<size_t>(yn));
    float* const xdata = xbuf.data();  // this thread's buffers (the workers' thread_locals are others)
    float* const ydata = ybuf.data();
    const int64_t experts = static_cast<int64_t>(b1 - b0);
    pool.parallel_for(experts, xn >= kParallelCopyFloats ? 1 : experts, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        ExpertPlan& pl = plan[b0 + static_cast<size_t>(i)];
        if (pl.scatter) pl.y = ydata + pl.y_off, pl.ldy = n_dim;
        if (!pl.gather) continue;
        float* dst = xdata + pl.x_off;
        for (int64_t r = 0; r < pl.n; ++r) {
          const int64_t src = ref::expert_x_row(rows, rows.sorted_pairs[pl.p0 + r]);
          if (xr.dtype == DType::kF32) {
            std::memcpy(dst + r * k_dim, xr.row<float>(src), static_cast<size_t>(k_dim) * 4);
          } else {
            for (int64_t c = 0; c < k_dim; ++c) dst[r * k_dim + c] = xr.get(src, c);
          }
        }
        pl.x = dst, pl.ldx = k_dim;
      }
    });
    // One task per (expert, block of its rows, slice of its output rows), each a serial fast linear
    // (nested parallel_for calls run inline), all in one parallel_for, largest first: a decode
    // step's few experts still fill the threads, and a prefill's busiest expert is shared out.
    tasks.clear();
    for (size_t i = b0; i < b1; ++i) {
      const int64_t n = plan[i].n, blocks = (n + kTaskRows - 1) / kTaskRows, block_rows = (n + blocks - 1) / blocks;
      for (int64_t r0 = 0; r0 < n; r0 += block_rows)
        for (int64_t sl = 0; sl < w.slices; ++sl)
          tasks.push_back({static_cast<int32_t>(i), static_cast<int32_t>(sl), r0, std::min(block_rows, n - r0)});
    }
    std::stable_sort(tasks.begin(), tasks.end(), [](const ExpertTask& a, const ExpertTask& b) { return a.rows > b.rows; });
    pool.parallel_for(static_cast<int64_t>(tasks.size()), 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const ExpertTask& task = tasks[static_cast<size_t>(t)];
        const ExpertPlan& pl = plan[static_cast<size_t>(task.plan)];
        const ops::PackedWeight& ws = *w.weights[static_cast<size_t>(pl.e * w.slices + task.slice)];
        const TensorView xv{const_cast<float*>(pl.x + task.r0 * pl.ldx), DType::kF32, {task.rows, k_dim}, {pl.ldx, 1}, Device::kCpu};
        const TensorView yv{pl.y + task.r0 * pl.ldy + task.slice * w.slice_rows, DType::kF32, {task.rows, ws.out}, {pl.ldy, 1},
                            Device::kCpu};
        fast::linear(yv, xv, ws, nullptr);
      }
    });
    if (yn == 0) {
      b0 = b1;
      continue;
    }
    pool.parallel_for(experts, yn >= kParallelCopyFloats ? 1 : experts, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const ExpertPlan& pl = plan[b0 + static_cast<size_t>(i)];
        if (!pl.scatter) continue;
        for (int64_t r = 0; r < pl.n; ++r) {
          const int32_t p = rows.sorted_pairs[pl.p0 + r];
          const float* src = pl.y + r * n_dim;
          if (o.dtype == DType::kF32) {
            std::memcpy(o.row<float>(p), src, static_cast<size_t>(n_dim) * 4);
          } else {
            for (int64_t c = 0; c < n_dim; ++c) o.set(p, c, src[c]);
          }
        }
      }
    });
    b0 = b1;
  }
}

// ---- moe_combine -----------------------------------------------------------------------------------

// The reference's arithmetic (ref::moe_combine): acc = 0; acc += w_j * y_j (j ascending, each
// product rounded); acc += gate * shared (or + shared); vectorised over the hidden dims.
void fast_moe_combine(TensorView out, TensorView y, TensorView weights, const TensorView* shared, const TensorView* shared_gate) {
  const ref::CombineRows c = ref::check_moe_combine_args(out, y, weights, shared, shared_gate);
  const Rows &o = c.out, &yr = c.y, &w = c.weights, &s = c.shared, &g = c.gate;
  const int64_t tokens = o.rows, hidden = o.cols, top_k = w.cols;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, hidden * top_k));
  ThreadPool::global().parallel_for(tokens, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float* wt = w.row<float>(t);
      float gate = 1.f;
      if (shared_gate) {
        const float v = g.get(t, 0);
        gate = 1.0f / (1.0f + std::exp(-v));
      }
      const float* sh = shared ? s.row<float>(t) : nullptr;
      float* dst = o.row<float>(t);
      int64_t h = 0;
      for (; h + 8 <= hidden; h += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t j = 0; j < top_k; ++j)
          acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(wt[j]), _mm256_loadu_ps(yr.row<float>(t * top_k + j) + h)));
        if (sh) {
          const __m256 sv = _mm256_loadu_ps(sh + h);
          acc = _mm256_add_ps(acc, shared_gate ? _mm256_mul_ps(_mm256_set1_ps(gate), sv) : sv);
        }
        _mm256_storeu_ps(dst + h, acc);
      }
      for (; h < hidden; ++h) {
        float acc = 0.f;
        for (int64_t j = 0; j < top_k; ++j) acc += wt[j] * yr.row<float>(t * top_k + j)[h];
        if (sh) acc += shared_gate ? gate * sh[h] : sh[h];
        dst[h] = acc;
      }
    }
  });
}

}  // namespace

// ---- CpuBackend ------------------------------------------------------------------------------------

Result<std::unique_ptr<ops::PackedWeight>> CpuBackend::pack_quantized_experts(const ops::QuantWeightView& w,
                                                                              int64_t experts) {
  if (reference_) return ref::pack_quantized_experts(w, experts);
  if (experts <= 0) return invalid_argument(strformat("expert weights: %lld experts", static_cast<long long>(experts)));
  auto p = std::make_unique<CpuExpertWeight>();
  set_slices(*p, w.out);
  for (int64_t e = 0; e < experts; ++e) {
    const ops::QuantWeightView ev = ops::expert_view(w, e);
    NB_RETURN_IF_ERROR(ops::validate_quant_weight(ev).with_context(
        strformat("expert %lld of %lld: ", static_cast<long long>(e), static_cast<long long>(experts))));
    for (int64_t s = 0; s < p->slices; ++s) {
      ops::QuantWeightView sv = ev;
      const int64_t r0 = s * p->slice_rows;
      sv.out = std::min(p->slice_rows, w.out - r0);
      sv.codes = ev.codes + ops::quant_codes_bytes(ev) / static_cast<size_t>(w.out) * static_cast<size_t>(r0);
      sv.scales = static_cast<const uint8_t*>(ev.scales) + dtype_bytes(w.scale_dtype, static_cast<size_t>(r0 * w.num_groups));
      if (ev.zeros) sv.zeros = ev.zeros + r0 * w.num_groups;
      NB_ASSIGN_OR_RETURN(auto one, pack_quantized_fast(sv));
      p->device_bytes += one->device_bytes;
      p->weights.push_back(std::move(one));
    }
  }
  p->out = w.out;
  p->in = w.in;
  p->quantized = true;
  p->bits = w.bits;
  p->group_size = w.group_size;
  p->experts = experts;
  return std::unique_ptr<ops::PackedWeight>(std::move(p));
}

Result<std::unique_ptr<ops::PackedWeight>> CpuBackend::pack_dense_experts(const TensorView& w) {
  if (reference_) return ref::pack_dense_experts(w);
  if (w.rank() != 3 || !w.is_contiguous() || !is_float16_or_32(w.dtype))
    return invalid_argument(strformat("dense expert weights: expected a contiguous 3-D BF16/F16/F32 tensor [E, out, in], got %s %s",
                                      dtype_name(w.dtype), shape_to_string(w.shape).c_str()));
  if (w.dim(0) <= 0 || w.dim(1) <= 0 || w.dim(2) <= 0)
    return invalid_argument(strformat("dense expert weights: shape must be positive, got %s", shape_to_string(w.shape).c_str()));
  auto p = std::make_unique<CpuExpertWeight>();
  const int64_t experts = w.dim(0), out = w.dim(1), in = w.dim(2);
  set_slices(*p, out);
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t s = 0; s < p->slices; ++s) {
      const int64_t r0 = s * p->slice_rows;
      const TensorView one{static_cast<uint8_t*>(w.data) + dtype_bytes(w.dtype, static_cast<size_t>((e * out + r0) * in)), w.dtype,
                           {std::min(p->slice_rows, out - r0), in}, {}, w.device};
      NB_ASSIGN_OR_RETURN(auto packed, pack_dense_fast(one));
      p->device_bytes += packed->device_bytes;
      p->weights.push_back(std::move(packed));
    }
  p->out = out;
  p->in = in;
  p->quantized = false;
  p->bits = dtype_bits(w.dtype);
  p->experts = experts;
  return std::unique_ptr<ops::PackedWeight>(std::move(p));
}

void CpuBackend::moe_route(TensorView weights, TensorView ids, TensorView logits, const ops::MoeRouteArgs& args) {
  if (reference_) return ref::moe_route(weights, ids, logits, args);
  ref::check_moe_route_args(weights, ids, logits, args);
  const Rows l = as_rows(logits), w = as_rows(weights), id = as_rows(ids);
  const int64_t grain = std::max<int64_t>(1, 16384 / (static_cast<int64_t>(args.num_experts) * args.top_k));
  ThreadPool::global().parallel_for(l.rows, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> row(static_cast<size_t>(args.num_experts));
    for (int64_t t = t0; t < t1; ++t) {
      const float* src = l.row<float>(t);
      if (l.dtype != DType::kF32) {
        for (int e = 0; e < args.num_experts; ++e) row[static_cast<size_t>(e)] = l.get(t, e);
        src = row.data();
      }
      ref::moe_route_row(src, args, w.row<float>(t), id.row<int32_t>(t));
    }
  });
}

void CpuBackend::moe_dispatch(int32_t* sorted_pairs, int32_t* expert_offsets, int32_t* pair_slots, const int32_t* ids,
                              const int32_t* row_slot, int64_t tokens, int top_k, int num_experts) {
  // A counting sort over P = T * top_k pairs: the reference is already linear and memory-bound.
  ref::moe_dispatch(sorted_pairs, expert_offsets, pair_slots, ids, row_slot, tokens, top_k, num_experts);
}

void CpuBackend::expert_linear(TensorView out, TensorView x, const ops::PackedWeight& w, const ops::ExpertRows& rows) {
  // A stack packed by the other mode is computed by the code that understands its layout.
  auto* fast_stack = dynamic_cast<const CpuExpertWeight*>(&w);
  if (reference_ || !fast_stack) return ref::expert_linear(out, x, w, rows);
  ref::check_expert_rows(out, x, w, rows);
  fast_expert_linear(out, x, *fast_stack, rows);
}

void CpuBackend::moe_combine(TensorView out, TensorView y, TensorView weights, const TensorView* shared,
                             const TensorView* shared_gate) {
  if (reference_ || !f32(out) || !f32(y) || !f32(weights) || (shared && !f32(*shared)))
    return ref::moe_combine(out, y, weights, shared, shared_gate);
  fast_moe_combine(out, y, weights, shared, shared_gate);
}

}  // namespace nb::cpu
