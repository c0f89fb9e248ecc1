#include "nn/mla.h"

#include <algorithm>
#include <cmath>

namespace nb::nn {

MlaAttention::MlaAttention(const std::string& prefix, const MlaSpec& spec) : spec_(spec) {
  const int64_t h = spec.hidden, heads = spec.num_heads;
  if (spec.q_lora_rank > 0) {
    q_a_proj_ = Linear(prefix + ".q_a_proj", spec.q_lora_rank, h);
    q_a_norm_ = RmsNorm(prefix + ".q_a_layernorm", spec.q_lora_rank, spec.rms_eps);
    q_b_proj_ = Linear(prefix + ".q_b_proj", heads * spec.qk_head_dim(), spec.q_lora_rank);
  } else {
    q_proj_ = Linear(prefix + ".q_proj", heads * spec.qk_head_dim(), h);
  }
  kv_a_proj_ = Linear(prefix + ".kv_a_proj_with_mqa", spec.latent_dim(), h);
  kv_a_norm_ = RmsNorm(prefix + ".kv_a_layernorm", spec.kv_lora_rank, spec.rms_eps);
  kv_b_proj_ = Linear(prefix + ".kv_b_proj", heads * (spec.qk_nope_head_dim + spec.v_head_dim), spec.kv_lora_rank);
  o_proj_ = Linear(prefix + ".o_proj", h, heads * spec.v_head_dim);
  if (spec_.softmax_scale == 0.f) spec_.softmax_scale = 1.0f / std::sqrt(static_cast<float>(spec.qk_head_dim()));
}

Status MlaAttention::load(WeightLoader& loader) {
  if (loader.backend().device() != Device::kCpu)
    return unsupported("multi-head latent attention (DeepSeek-V3 / Kimi-K2) is not implemented on the " +
                       loader.backend().name() + " backend yet: run this model with --device cpu");
  const bool bias = spec_.attention_bias;
  if (spec_.q_lora_rank > 0) {
    NB_RETURN_IF_ERROR(loader.load_linear(q_a_proj_, bias));
    NB_RETURN_IF_ERROR(q_a_norm_.load(loader));
    NB_RETURN_IF_ERROR(loader.load_linear(q_b_proj_, false));
  } else {
    NB_RETURN_IF_ERROR(loader.load_linear(q_proj_, false));
  }
  NB_RETURN_IF_ERROR(loader.load_linear(kv_a_proj_, bias));
  NB_RETURN_IF_ERROR(kv_a_norm_.load(loader));
  NB_RETURN_IF_ERROR(loader.load_linear(kv_b_proj_, false));
  NB_RETURN_IF_ERROR(loader.load_linear(o_proj_, bias));
  return Status::ok();
}

std::vector<Linear*> MlaAttention::linears() {
  if (spec_.q_lora_rank > 0) return {&q_a_proj_, &q_b_proj_, &kv_a_proj_, &kv_b_proj_, &o_proj_};
  return {&q_proj_, &kv_a_proj_, &kv_b_proj_, &o_proj_};
}

void MlaContext::prepare(const BatchContext& ctx, ops::Backend& backend, const MlaSpec& spec) {
  NB_CHECK(backend.device() == Device::kCpu, "MLA context expansion reads the batch on the host (CPU backend only)");
  const ops::AttentionArgs& a = ctx.attention;
  slots.clear();
  row_slot.clear();
  max_context = 0;
  for (int s = 0; s < a.num_seqs; ++s) max_context = std::max(max_context, a.context_lens[s]);
  block_tables.assign(static_cast<size_t>(a.num_seqs) * static_cast<size_t>(std::max(max_context, 1)), 0);
  for (int s = 0; s < a.num_seqs; ++s) {
    const int32_t len = a.context_lens[s];
    // The adapter of a sequence is the one of its rows in this batch (one adapter per sequence).
    const int32_t slot = ctx.host_row_slot ? ctx.host_row_slot[a.query_start[s]] : -1;
    for (int32_t j = 0; j < len; ++j) {
      const int32_t block = a.block_tables[static_cast<int64_t>(s) * a.max_blocks_per_seq + j / a.block_size];
      block_tables[static_cast<size_t>(s) * static_cast<size_t>(max_context) + static_cast<size_t>(j)] =
          static_cast<int32_t>(slots.size());
      slots.push_back(block * a.block_size + j % a.block_size);
      row_slot.push_back(slot);
    }
  }
  rows = static_cast<int64_t>(slots.size());
  const int64_t heads = spec.num_heads;
  const int rank = ctx.lora_scratch.data ? static_cast<int>(ctx.lora_scratch.dim(-1)) : 0;
  if (rows > capacity || (rank > 0 && rows * rank > lora_capacity)) {
    capacity = std::max(rows, capacity);
    lora_capacity = std::max<int64_t>(lora_capacity, rows * std::max(rank, 1));
    buffers.clear();
    const DType dt = backend.activation_dtype();
    auto make = [&](DType t, Shape shape) {
      buffers.emplace_back(backend, dtype_bytes(t, static_cast<size_t>(shape_numel(shape))));
      return buffers.back().view(t, std::move(shape));
    };
    latent = make(dt, {capacity, spec.latent_dim()});
    kv = make(dt, {capacity, heads * (spec.qk_nope_head_dim + spec.v_head_dim)});
    k = make(dt, {capacity, heads, spec.qk_head_dim()});
    v = make(dt, {capacity, heads, spec.v_head_dim});
    lora = make(DType::kF32, {lora_capacity});
  }
}

namespace {
// [rows, heads, d] contiguous -> the 2-D view [rows, heads * d].
TensorView flat2(TensorView t) { return reshape(t, {t.dim(0), t.numel() / std::max<int64_t>(t.dim(0), 1)}); }

TensorView with_rows(TensorView t, int64_t rows) {
  t.shape[0] = rows;
  return t;
}
}  // namespace

void MlaAttention::forward(const BatchContext& ctx, const ops::RopeArgs& rope, TensorView out, TensorView x,
                           TensorView cache, const MlaScratch& s, MlaContext& cx) const {
  ops::Backend& b = *ctx.backend;
  const int64_t t = ctx.num_tokens, heads = spec_.num_heads;
  const int64_t nope = spec_.qk_nope_head_dim, rot = spec_.qk_rope_head_dim, vd = spec_.v_head_dim;
  const int64_t qk = spec_.qk_head_dim(), kvr = spec_.kv_lora_rank, lat = spec_.latent_dim();
  // q: [T, H, nope + rope]
  TensorView q = rows_view(s.q, t);
  if (spec_.q_lora_rank > 0) {
    TensorView qa = rows_view(s.q_a, t);
    q_a_proj_.forward(ctx, qa, x);
    q_a_norm_.forward(ctx, qa, qa);
    q_b_proj_.forward(ctx, q, qa);
  } else {
    q_proj_.forward(ctx, q, x);
  }
  // latent: [T, kv_lora_rank + rope] = [norm(c), rope(k_rope)], exactly the cache row.
  TensorView latent = rows_view(s.latent, t);
  kv_a_proj_.forward(ctx, latent, x);
  TensorView c = column_slice(latent, 0, kvr);
  kv_a_norm_.forward(ctx, c, c);
  TensorView q_rot{static_cast<uint8_t*>(q.data) + dtype_bytes(q.dtype, static_cast<size_t>(nope)), q.dtype,
                   {t, heads, rot}, {heads * qk, qk, 1}, q.device};
  TensorView k_rot{static_cast<uint8_t*>(latent.data) + dtype_bytes(latent.dtype, static_cast<size_t>(kvr)),
                   latent.dtype, {t, 1, rot}, {lat, rot, 1}, latent.device};
  b.rope(q_rot, ctx.positions, rope);
  b.rope(k_rot, ctx.positions, rope);
  TensorView no_v{cache.data, cache.dtype, {t, 1, 0}, {}, cache.device};
  TensorView empty_cache{cache.data, cache.dtype, {cache.dim(0), 1, 0}, {}, cache.device};
  b.kv_store(cache, empty_cache, reshape(latent, {t, 1, lat}), no_v, ctx.slot_mapping);

  // Expand every sequence's cached context: kv = kv_b_proj(c) with the sequence's adapter.
  const int64_t n = cx.rows;
  TensorView ctx_latent = with_rows(cx.latent, n);
  b.embedding(ctx_latent, reshape(cache, {cache.dim(0), lat}), cx.slots.data(), n);
  TensorView kv = with_rows(cx.kv, n);
  BatchContext sub = ctx;
  sub.num_tokens = n;
  if (ctx.row_slot) {
    sub.row_slot = cx.row_slot.data();
    sub.host_row_slot = cx.row_slot.data();
    const int64_t rank = ctx.lora_scratch.dim(-1);
    sub.lora_scratch = TensorView{cx.lora.data, DType::kF32, {n, rank}, {}, cx.lora.device};
  }
  kv_b_proj_.forward(sub, kv, column_slice(ctx_latent, 0, kvr));
  // keys [N, H, nope + rope] = [k_nope of each head, the shared rope key]; values [N, H, v]
  TensorView k2 = flat2(with_rows(cx.k, n)), v2 = flat2(with_rows(cx.v, n));
  for (int64_t h = 0; h < heads; ++h) {
    b.cast(column_slice(k2, h * qk, nope), column_slice(kv, h * (nope + vd), nope));
    b.cast(column_slice(k2, h * qk + nope, rot), column_slice(ctx_latent, kvr, rot));
    b.cast(column_slice(v2, h * vd, vd), column_slice(kv, h * (nope + vd) + nope, vd));
  }
  ops::AttentionArgs args = ctx.attention;
  args.block_tables = cx.block_tables.data();
  args.max_blocks_per_seq = std::max(cx.max_context, 1);
  args.block_size = 1;
  args.num_heads = static_cast<int>(heads);
  args.num_kv_heads = static_cast<int>(heads);
  args.head_dim = static_cast<int>(qk);
  args.v_head_dim = static_cast<int>(vd);
  args.scale = spec_.softmax_scale;
  args.sliding_window = 0;
  args.max_context_len = std::max(args.max_context_len, cx.max_context);
  TensorView attn = rows_view(s.attn, t);
  b.attention(reshape(attn, {t, heads, vd}), reshape(q, {t, heads, qk}), with_rows(cx.k, n), with_rows(cx.v, n), args);
  o_proj_.forward(ctx, out, attn);
}

}  // namespace nb::nn
