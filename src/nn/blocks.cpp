#include "nn/blocks.h"

#include <cmath>

namespace nb::nn {

TensorView rows_view(TensorView t, int64_t rows) {
  t.shape[0] = rows;
  return t;
}

TensorView reshape(TensorView t, Shape shape) {
  NB_CHECK(t.is_contiguous() && shape_numel(shape) == t.numel(), "reshape %s -> %s",
           shape_to_string(t.shape).c_str(), shape_to_string(shape).c_str());
  t.shape = std::move(shape);
  t.strides.clear();
  return t;
}

// ---- RmsNorm -------------------------------------------------------------------------------------

Status RmsNorm::load(WeightLoader& loader) {
  NB_ASSIGN_OR_RETURN(weight_, loader.load_dense(name_ + ".weight", {dim_}));
  return Status::ok();
}

void RmsNorm::forward(const BatchContext& ctx, TensorView out, TensorView x) const {
  ctx.backend->rms_norm(out, x, weight_.view(), eps_);
}

// ---- Attention -------------------------------------------------------------------------------------

Attention::Attention(const std::string& prefix, const AttentionSpec& spec)
    : spec_(spec),
      q_(prefix + ".q_proj", int64_t{spec.num_heads} * spec.head_dim, spec.hidden),
      k_(prefix + ".k_proj", int64_t{spec.num_kv_heads} * spec.head_dim, spec.hidden),
      v_(prefix + ".v_proj", int64_t{spec.num_kv_heads} * spec.head_dim, spec.hidden),
      o_(prefix + ".o_proj", spec.hidden, int64_t{spec.num_heads} * spec.head_dim) {
  if (spec.qk_norm) {
    q_norm_ = RmsNorm(prefix + ".q_norm", spec.head_dim, spec.rms_eps);
    k_norm_ = RmsNorm(prefix + ".k_norm", spec.head_dim, spec.rms_eps);
  }
  if (spec_.softmax_scale == 0.f) spec_.softmax_scale = 1.0f / std::sqrt(static_cast<float>(spec.head_dim));
}

Status Attention::load(WeightLoader& loader) {
  NB_RETURN_IF_ERROR(loader.load_linear(q_, spec_.qkv_bias));
  NB_RETURN_IF_ERROR(loader.load_linear(k_, spec_.qkv_bias));
  NB_RETURN_IF_ERROR(loader.load_linear(v_, spec_.qkv_bias));
  NB_RETURN_IF_ERROR(loader.load_linear(o_, spec_.o_bias));
  if (spec_.qk_norm) {
    NB_RETURN_IF_ERROR(q_norm_.load(loader));
    NB_RETURN_IF_ERROR(k_norm_.load(loader));
  }
  return Status::ok();
}

void Attention::forward(const BatchContext& ctx, const ops::RopeArgs& rope, TensorView out, TensorView x,
                        TensorView k_cache, TensorView v_cache, const AttentionScratch& s) const {
  const int64_t t = ctx.num_tokens;
  const int h = spec_.num_heads, kv = spec_.num_kv_heads, d = spec_.head_dim;
  TensorView q = rows_view(s.q, t), k = rows_view(s.k, t), v = rows_view(s.v, t), attn = rows_view(s.attn, t);
  q_.forward(ctx, q, x);  // [T, H*D]
  k_.forward(ctx, k, x);  // [T, KV*D]
  v_.forward(ctx, v, x);
  if (spec_.qk_norm) {  // per head, before RoPE
    TensorView qh = reshape(q, {t * h, d}), kh = reshape(k, {t * kv, d});
    q_norm_.forward(ctx, qh, qh);
    k_norm_.forward(ctx, kh, kh);
  }
  TensorView q3 = reshape(q, {t, h, d}), k3 = reshape(k, {t, kv, d}), v3 = reshape(v, {t, kv, d});
  ctx.backend->rope(q3, ctx.positions, rope);
  ctx.backend->rope(k3, ctx.positions, rope);
  ctx.backend->kv_store(k_cache, v_cache, k3, v3, ctx.slot_mapping);
  ops::AttentionArgs args = ctx.attention;
  args.num_heads = h;
  args.num_kv_heads = kv;
  args.head_dim = d;
  args.v_head_dim = d;
  args.scale = spec_.softmax_scale;
  args.sliding_window = spec_.sliding_window;
  ctx.backend->attention(reshape(attn, {t, h, d}), q3, k_cache, v_cache, args);
  o_.forward(ctx, out, attn);
}

// ---- GatedMlp ----------------------------------------------------------------------------------------

GatedMlp::GatedMlp(const std::string& gate, const std::string& up, const std::string& down, int64_t hidden,
                   int64_t intermediate, bool bias)
    : gate_(gate, intermediate, hidden),
      up_(up, intermediate, hidden),
      down_(down, hidden, intermediate),
      intermediate_(intermediate),
      bias_(bias) {}

Status GatedMlp::load(WeightLoader& loader) {
  NB_RETURN_IF_ERROR(loader.load_linear(gate_, bias_));
  NB_RETURN_IF_ERROR(loader.load_linear(up_, bias_));
  NB_RETURN_IF_ERROR(loader.load_linear(down_, bias_));
  return Status::ok();
}

void GatedMlp::forward(const BatchContext& ctx, TensorView out, TensorView x, const MlpScratch& s) const {
  TensorView gate = rows_view(s.gate, ctx.num_tokens), up = rows_view(s.up, ctx.num_tokens);
  gate_.forward(ctx, gate, x);
  up_.forward(ctx, up, x);
  ctx.backend->silu_mul(gate, gate, up);  // in place: [T, I]
  down_.forward(ctx, out, gate);
}

}  // namespace nb::nn
