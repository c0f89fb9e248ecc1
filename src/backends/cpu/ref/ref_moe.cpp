// Reference mixture-of-experts ops (formats.md §7.3): expert weight stacks kept in the canonical plain
// layout, routing, grouping of the (token, choice) pairs by expert, the per-expert matrix product
// (per-element dequantization, double accumulation) and the weighted combination.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/ref/ref_ops.h"
#include "backends/cpu/rows.h"

namespace nb::cpu::ref {

namespace {

// Index of the best entry of v[0, n) not yet taken: largest value, ties to the lower index (NaN is
// never preferred). Marks it taken.
int take_best(const float* v, int n, std::vector<uint8_t>& taken) {
  int best = -1;
  for (int i = 0; i < n; ++i) {
    if (taken[static_cast<size_t>(i)]) continue;
    if (best < 0 || v[i] > v[best]) best = i;
  }
  taken[static_cast<size_t>(best)] = 1;
  return best;
}

}  // namespace

Result<std::unique_ptr<ops::PackedWeight>> pack_quantized_experts(const ops::QuantWeightView& w, int64_t experts) {
  if (experts <= 0) return invalid_argument(strformat("expert weights: %lld experts", static_cast<long long>(experts)));
  auto p = std::make_unique<RefExpertWeight>();
  for (int64_t e = 0; e < experts; ++e) {
    auto one = pack_quantized(ops::expert_view(w, e));
    if (!one.is_ok())
      return one.status().with_context(strformat("expert %lld of %lld: ", static_cast<long long>(e), static_cast<long long>(experts)));
    p->device_bytes += (*one)->device_bytes;
    p->weights.push_back(std::move(one).value());
  }
  p->out = w.out;
  p->in = w.in;
  p->quantized = true;
  p->bits = w.bits;
  p->group_size = w.group_size;
  p->experts = experts;
  return std::unique_ptr<ops::PackedWeight>(std::move(p));
}

Result<std::unique_ptr<ops::PackedWeight>> pack_dense_experts(const TensorView& w) {
  if (w.rank() != 3 || !w.is_contiguous() || !is_float16_or_32(w.dtype))
    return invalid_argument(strformat("dense expert weights: expected a contiguous 3-D BF16/F16/F32 tensor [E, out, in], got %s %s",
                                      dtype_name(w.dtype), shape_to_string(w.shape).c_str()));
  if (w.dim(0) <= 0 || w.dim(1) <= 0 || w.dim(2) <= 0)
    return invalid_argument(strformat("dense expert weights: shape must be positive, got %s", shape_to_string(w.shape).c_str()));
  auto p = std::make_unique<RefExpertWeight>();
  const int64_t experts = w.dim(0), out = w.dim(1), in = w.dim(2);
  for (int64_t e = 0; e < experts; ++e) {
    const TensorView one{static_cast<uint8_t*>(w.data) + dtype_bytes(w.dtype, static_cast<size_t>(e * out * in)), w.dtype,
                         {out, in}, {}, w.device};
    NB_ASSIGN_OR_RETURN(auto packed, pack_dense(one));
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

void check_moe_route_args(const TensorView& weights, const TensorView& ids, const TensorView& logits,
                          const ops::MoeRouteArgs& a) {
  const int e = a.num_experts;
  NB_CHECK(e >= 1 && a.top_k >= 1 && a.top_k <= e, "moe_route: top_k %d of %d experts", a.top_k, e);
  NB_CHECK(a.num_groups >= 1 && e % a.num_groups == 0 && a.topk_groups >= 1 && a.topk_groups <= a.num_groups,
           "moe_route: %d experts in %d groups, topk_groups %d", e, a.num_groups, a.topk_groups);
  NB_CHECK(a.topk_groups == a.num_groups || static_cast<int64_t>(a.topk_groups) * (e / a.num_groups) >= a.top_k,
           "moe_route: top_k %d exceeds the %d experts of the %d kept groups", a.top_k, a.topk_groups * (e / a.num_groups),
           a.topk_groups);
  NB_CHECK(logits.rank() == 2 && logits.dim(1) == e && is_float16_or_32(logits.dtype), "moe_route: logits %s %s, %d experts",
           dtype_name(logits.dtype), shape_to_string(logits.shape).c_str(), e);
  const int64_t t = logits.dim(0);
  NB_CHECK(weights.rank() == 2 && weights.dim(0) == t && weights.dim(1) == a.top_k && weights.dtype == DType::kF32,
           "moe_route: weights %s %s, expected F32 [%lld, %d]", dtype_name(weights.dtype), shape_to_string(weights.shape).c_str(),
           static_cast<long long>(t), a.top_k);
  NB_CHECK(ids.rank() == 2 && ids.dim(0) == t && ids.dim(1) == a.top_k && ids.dtype == DType::kI32,
           "moe_route: ids %s %s, expected I32 [%lld, %d]", dtype_name(ids.dtype), shape_to_string(ids.shape).c_str(),
           static_cast<long long>(t), a.top_k);
}

void moe_route_row(const float* logits, const ops::MoeRouteArgs& a, float* weights, int32_t* ids) {
  const int n = a.num_experts;
  thread_local std::vector<float> score, choice, group_score;
  thread_local std::vector<double> ex;
  thread_local std::vector<uint8_t> taken;
  score.resize(static_cast<size_t>(n));
  choice.resize(static_cast<size_t>(n));
  if (a.scoring == ops::MoeScoring::kSoftmax) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int e = 0; e < n; ++e) mx = std::max(mx, logits[e]);
    ex.resize(static_cast<size_t>(n));
    double sum = 0;
    for (int e = 0; e < n; ++e) sum += (ex[static_cast<size_t>(e)] = std::exp(static_cast<double>(logits[e]) - mx));
    for (int e = 0; e < n; ++e) score[static_cast<size_t>(e)] = static_cast<float>(ex[static_cast<size_t>(e)] / sum);
  } else {
    for (int e = 0; e < n; ++e)
      score[static_cast<size_t>(e)] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(logits[e]))));
  }
  for (int e = 0; e < n; ++e)
    choice[static_cast<size_t>(e)] = a.correction_bias ? score[static_cast<size_t>(e)] + a.correction_bias[e] : score[static_cast<size_t>(e)];
  if (a.num_groups > 1 && a.topk_groups < a.num_groups) {
    // Group score: the sum of the group's two best choice scores (the one score of a group of one).
    const int gsize = n / a.num_groups;
    group_score.resize(static_cast<size_t>(a.num_groups));
    for (int g = 0; g < a.num_groups; ++g) {
      const float* v = choice.data() + g * gsize;
      if (gsize == 1) {
        group_score[static_cast<size_t>(g)] = v[0];
        continue;
      }
      float best = -std::numeric_limits<float>::infinity(), second = best;
      for (int i = 0; i < gsize; ++i) {
        if (v[i] > best) {
          second = best;
          best = v[i];
        } else if (v[i] > second) {
          second = v[i];
        }
      }
      group_score[static_cast<size_t>(g)] = best + second;
    }
    taken.assign(static_cast<size_t>(a.num_groups), 0);
    for (int j = 0; j < a.topk_groups; ++j) take_best(group_score.data(), a.num_groups, taken);
    // Experts of the groups left out can not be chosen (vLLM's -inf fill, formats.md §7.3).
    for (int e = 0; e < n; ++e)
      if (!taken[static_cast<size_t>(e / gsize)]) choice[static_cast<size_t>(e)] = -std::numeric_limits<float>::infinity();
  }
  taken.assign(static_cast<size_t>(n), 0);
  double sum = 0;
  for (int j = 0; j < a.top_k; ++j) {
    ids[j] = take_best(choice.data(), n, taken);
    weights[j] = score[static_cast<size_t>(ids[j])];
    sum += weights[j];
  }
  if (a.renormalize) {
    const float denom = static_cast<float>(sum) + a.renorm_eps;
    for (int j = 0; j < a.top_k; ++j) weights[j] = weights[j] / denom;
  }
  if (a.scaling != 1.f)
    for (int j = 0; j < a.top_k; ++j) weights[j] = weights[j] * a.scaling;
}

void moe_route(TensorView weights, TensorView ids, TensorView logits, const ops::MoeRouteArgs& args) {
  check_moe_route_args(weights, ids, logits, args);
  const Rows l = as_rows(logits), w = as_rows(weights), id = as_rows(ids);
  std::vector<float> row(static_cast<size_t>(args.num_experts));
  for (int64_t t = 0; t < l.rows; ++t) {
    for (int e = 0; e < args.num_experts; ++e) row[static_cast<size_t>(e)] = l.get(t, e);
    moe_route_row(row.data(), args, w.row<float>(t), id.row<int32_t>(t));
  }
}

void moe_dispatch(int32_t* sorted_pairs, int32_t* expert_offsets, int32_t* pair_slots, const int32_t* ids,
                  const int32_t* row_slot, int64_t tokens, int top_k, int num_experts) {
  NB_CHECK(tokens >= 0 && top_k >= 1 && num_experts >= 1, "moe_dispatch: %lld tokens, top_k %d, %d experts",
           static_cast<long long>(tokens), top_k, num_experts);
  const int64_t pairs = tokens * top_k;
  std::fill(expert_offsets, expert_offsets + num_experts + 1, 0);
  for (int64_t p = 0; p < pairs; ++p) {
    NB_CHECK(ids[p] >= 0 && ids[p] < num_experts, "moe_dispatch: pair %lld names expert %d of %d", static_cast<long long>(p),
             ids[p], num_experts);
    ++expert_offsets[ids[p] + 1];
  }
  for (int e = 0; e < num_experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
  std::vector<int32_t> next(expert_offsets, expert_offsets + num_experts);
  for (int64_t p = 0; p < pairs; ++p) sorted_pairs[next[static_cast<size_t>(ids[p])]++] = static_cast<int32_t>(p);
  if (!pair_slots) return;
  for (int64_t p = 0; p < pairs; ++p) {
    const int32_t slot = row_slot ? row_slot[p / top_k] : -1;
    const int64_t v = slot < 0 ? -1 : static_cast<int64_t>(slot) * num_experts + ids[p];
    NB_CHECK(v <= std::numeric_limits<int32_t>::max(), "moe_dispatch: slot %d x %d experts overflows int32", slot, num_experts);
    pair_slots[p] = static_cast<int32_t>(v);
  }
}

void check_expert_rows(const TensorView& out, const TensorView& x, const ops::PackedWeight& w, const ops::ExpertRows& rows) {
  const Rows o = as_rows(out), xr = as_rows(x);
  NB_CHECK(w.experts >= 1 && rows.num_experts == w.experts && rows.top_k >= 1 && rows.pairs >= 0 &&
               (!rows.x_by_token || rows.pairs % rows.top_k == 0),
           "expert_linear: a stack of %lld experts, rows for %d experts, %lld pairs, top_k %d", static_cast<long long>(w.experts),
           rows.num_experts, static_cast<long long>(rows.pairs), rows.top_k);
  const int64_t x_rows = rows.x_by_token ? rows.pairs / rows.top_k : rows.pairs;
  NB_CHECK(o.rows == rows.pairs && o.cols == w.out && xr.rows == x_rows && xr.cols == w.in,
           "expert_linear: out %s, x %s (%s), %lld pairs, experts [%lld, %lld]", shape_to_string(out.shape).c_str(),
           shape_to_string(x.shape).c_str(), rows.x_by_token ? "by token" : "by pair", static_cast<long long>(rows.pairs),
           static_cast<long long>(w.out), static_cast<long long>(w.in));
  NB_CHECK(rows.expert_offsets[0] == 0 && rows.expert_offsets[rows.num_experts] == rows.pairs,
           "expert_linear: expert_offsets run from %d to %d, expected 0 to %lld", rows.expert_offsets[0],
           rows.expert_offsets[rows.num_experts], static_cast<long long>(rows.pairs));
  for (int e = 0; e < rows.num_experts; ++e)
    NB_CHECK(rows.expert_offsets[e] <= rows.expert_offsets[e + 1], "expert_linear: expert_offsets[%d] = %d > [%d] = %d", e,
             rows.expert_offsets[e], e + 1, rows.expert_offsets[e + 1]);
  for (int64_t i = 0; i < rows.pairs; ++i)
    NB_CHECK(rows.sorted_pairs[i] >= 0 && rows.sorted_pairs[i] < rows.pairs, "expert_linear: sorted_pairs[%lld] = %d of %lld pairs",
             static_cast<long long>(i), rows.sorted_pairs[i], static_cast<long long>(rows.pairs));
}

void expert_linear(TensorView out, TensorView x, const ops::PackedWeight& w, const ops::ExpertRows& rows) {
  check_expert_rows(out, x, w, rows);
  auto* stack = dynamic_cast<const RefExpertWeight*>(&w);
  NB_CHECK(stack != nullptr, "expert_linear: the reference needs an expert stack packed by the reference backend");
  const Rows o = as_rows(out), xr = as_rows(x);
  std::vector<float> wrow(static_cast<size_t>(w.in));
  for (int e = 0; e < rows.num_experts; ++e) {
    const int32_t p0 = rows.expert_offsets[e], p1 = rows.expert_offsets[e + 1];
    if (p0 == p1) continue;
    const ops::PackedWeight& we = *stack->weights[static_cast<size_t>(e)];
    for (int64_t n = 0; n < w.out; ++n) {
      for (int64_t k = 0; k < w.in; ++k) wrow[static_cast<size_t>(k)] = weight_at(we, n, k);
      for (int32_t i = p0; i < p1; ++i) {
        const int64_t p = rows.sorted_pairs[i], r = expert_x_row(rows, p);
        double s = 0;
        for (int64_t k = 0; k < w.in; ++k) s += static_cast<double>(xr.get(r, k)) * wrow[static_cast<size_t>(k)];
        o.set(p, n, static_cast<float>(s));
      }
    }
  }
}

CombineRows check_moe_combine_args(const TensorView& out, const TensorView& y, const TensorView& weights,
                                   const TensorView* shared, const TensorView* shared_gate) {
  CombineRows c{as_rows(out), as_rows(y), as_rows(weights), {}, {}};
  const int64_t tokens = c.out.rows, hidden = c.out.cols, top_k = c.weights.cols;
  NB_CHECK(c.weights.rows == tokens && top_k >= 1 && c.y.rows == tokens * top_k && c.y.cols == hidden,
           "moe_combine: out %s, y %s, weights %s", shape_to_string(out.shape).c_str(), shape_to_string(y.shape).c_str(),
           shape_to_string(weights.shape).c_str());
  if (shared) {
    c.shared = as_rows(*shared);
    NB_CHECK(c.shared.rows == tokens && c.shared.cols == hidden, "moe_combine: shared %s, out %s",
             shape_to_string(shared->shape).c_str(), shape_to_string(out.shape).c_str());
  }
  if (shared_gate) {
    NB_CHECK(shared, "moe_combine: shared_gate without shared");
    c.gate = as_rows(*shared_gate);
    NB_CHECK(c.gate.rows == tokens && c.gate.cols == 1, "moe_combine: shared_gate %s, expected [%lld, 1]",
             shape_to_string(shared_gate->shape).c_str(), static_cast<long long>(tokens));
  }
  return c;
}

void moe_combine(TensorView out, TensorView y, TensorView weights, const TensorView* shared, const TensorView* shared_gate) {
  const CombineRows c = check_moe_combine_args(out, y, weights, shared, shared_gate);
  const Rows &o = c.out, &yr = c.y, &w = c.weights, &s = c.shared, &g = c.gate;
  const int64_t tokens = o.rows, hidden = o.cols, top_k = w.cols;
  for (int64_t t = 0; t < tokens; ++t) {
    float gate = 1.f;
    if (shared_gate) {
      const float v = g.get(t, 0);
      gate = 1.0f / (1.0f + std::exp(-v));
    }
    for (int64_t h = 0; h < hidden; ++h) {
      float acc = 0.f;
      for (int64_t j = 0; j < top_k; ++j) acc += w.get(t, j) * yr.get(t * top_k + j, h);
      if (shared) acc += shared_gate ? gate * s.get(t, h) : s.get(t, h);
      o.set(t, h, acc);
    }
  }
}

}  // namespace nb::cpu::ref
