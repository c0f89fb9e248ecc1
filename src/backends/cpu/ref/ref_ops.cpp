// Reference elementwise ops, normalisation, rotary embedding, KV cache and attention.
#include <algorithm>
#include <cmath>
#include <limits>

#include "backends/cpu/ref/ref_ops.h"
#include "backends/cpu/rows.h"

namespace nb::cpu::ref {

void embedding(TensorView out, TensorView table, const int32_t* ids, int64_t num_tokens) {
  const Rows o = as_rows(out), t = as_rows(table);
  NB_CHECK(o.rows >= num_tokens && o.cols == t.cols, "embedding: out %s, table %s, %lld tokens",
           shape_to_string(out.shape).c_str(), shape_to_string(table.shape).c_str(), static_cast<long long>(num_tokens));
  for (int64_t i = 0; i < num_tokens; ++i) {
    NB_CHECK(ids[i] >= 0 && ids[i] < t.rows, "embedding: id %d outside [0, %lld)", ids[i], static_cast<long long>(t.rows));
    for (int64_t c = 0; c < o.cols; ++c) o.set(i, c, t.get(ids[i], c));
  }
}

void rms_norm(TensorView out, TensorView x, TensorView weight, float eps) {
  const Rows o = as_rows(out), xr = as_rows(x);
  NB_CHECK(o.rows == xr.rows && o.cols == xr.cols && weight.numel() == xr.cols, "rms_norm: out %s, x %s, weight %s",
           shape_to_string(out.shape).c_str(), shape_to_string(x.shape).c_str(), shape_to_string(weight.shape).c_str());
  for (int64_t r = 0; r < xr.rows; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < xr.cols; ++c) ss += static_cast<double>(xr.get(r, c)) * xr.get(r, c);
    const float var = static_cast<float>(ss / static_cast<double>(xr.cols));
    const float inv = 1.0f / std::sqrt(var + eps);  // torch.rsqrt in F32
    for (int64_t c = 0; c < xr.cols; ++c) {
      const float w = load_as_float(weight.data, weight.dtype, static_cast<size_t>(c));
      o.set(r, c, w * (xr.get(r, c) * inv));
    }
  }
}

void add(TensorView out, TensorView a, TensorView b) {
  const Rows o = as_rows(out), ar = as_rows(a), br = as_rows(b);
  NB_CHECK(o.rows == ar.rows && o.cols == ar.cols && br.rows == ar.rows && br.cols == ar.cols, "add: %s = %s + %s",
           shape_to_string(out.shape).c_str(), shape_to_string(a.shape).c_str(), shape_to_string(b.shape).c_str());
  for (int64_t r = 0; r < o.rows; ++r)
    for (int64_t c = 0; c < o.cols; ++c) o.set(r, c, ar.get(r, c) + br.get(r, c));
}

void mul(TensorView out, TensorView a, TensorView b) {
  const Rows o = as_rows(out), ar = as_rows(a), br = as_rows(b);
  const bool row_scalar = br.cols == 1 && br.rows == ar.rows && ar.cols != 1;
  NB_CHECK(o.rows == ar.rows && o.cols == ar.cols && br.rows == ar.rows && (row_scalar || br.cols == ar.cols),
           "mul: %s = %s * %s", shape_to_string(out.shape).c_str(), shape_to_string(a.shape).c_str(),
           shape_to_string(b.shape).c_str());
  for (int64_t r = 0; r < o.rows; ++r)
    for (int64_t c = 0; c < o.cols; ++c) o.set(r, c, ar.get(r, c) * br.get(r, row_scalar ? 0 : c));
}

void silu_mul(TensorView out, TensorView gate, TensorView up) {
  const Rows o = as_rows(out), g = as_rows(gate), u = as_rows(up);
  NB_CHECK(o.rows == g.rows && o.cols == g.cols && u.rows == g.rows && u.cols == g.cols, "silu_mul: %s, %s, %s",
           shape_to_string(out.shape).c_str(), shape_to_string(gate.shape).c_str(), shape_to_string(up.shape).c_str());
  for (int64_t r = 0; r < o.rows; ++r) {
    for (int64_t c = 0; c < o.cols; ++c) {
      const float x = g.get(r, c);
      o.set(r, c, x / (1.0f + std::exp(-x)) * u.get(r, c));
    }
  }
}

void cast(TensorView out, TensorView in) {
  const Rows o = as_rows(out), i = as_rows(in);
  NB_CHECK(o.rows == i.rows && o.cols == i.cols, "cast: %s <- %s", shape_to_string(out.shape).c_str(),
           shape_to_string(in.shape).c_str());
  for (int64_t r = 0; r < o.rows; ++r)
    for (int64_t c = 0; c < o.cols; ++c) o.set(r, c, i.get(r, c));
}

void rope_cos_sin(int32_t position, const ops::RopeArgs& args, float* cos_out, float* sin_out) {
  for (int i = 0; i < args.rotary_dim / 2; ++i) {
    const float f = static_cast<float>(position) * args.inv_freq[i];
    cos_out[i] = std::cos(f) * args.attention_factor;
    sin_out[i] = std::sin(f) * args.attention_factor;
  }
}

void rope_strides(const TensorView& x, const ops::RopeArgs& args, int64_t* s0, int64_t* s1) {
  NB_CHECK(x.rank() == 3 && x.dtype == DType::kF32 && (x.is_contiguous() || (x.strides.size() == 3 && x.strides[2] == 1)),
           "rope: x must be F32 [T, heads, d], contiguous or with strides {s0, s1, 1}, got %s %s strides %s", dtype_name(x.dtype),
           shape_to_string(x.shape).c_str(), shape_to_string(x.strides).c_str());
  NB_CHECK(args.rotary_dim > 0 && args.rotary_dim % 2 == 0 && args.rotary_dim <= x.dim(2), "rope: rotary_dim %d, head_dim %lld",
           args.rotary_dim, static_cast<long long>(x.dim(2)));
  const bool plain = x.is_contiguous();
  *s0 = plain ? x.dim(1) * x.dim(2) : x.strides[0];
  *s1 = plain ? x.dim(2) : x.strides[1];
}

void rope(TensorView x, const int32_t* positions, const ops::RopeArgs& args) {
  int64_t s0 = 0, s1 = 0;
  rope_strides(x, args, &s0, &s1);
  const int64_t tokens = x.dim(0), heads = x.dim(1);
  const int half = args.rotary_dim / 2;
  std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
  for (int64_t t = 0; t < tokens; ++t) {
    rope_cos_sin(positions[t], args, cs.data(), sn.data());
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x.as<float>() + t * s0 + h * s1;
      for (int i = 0; i < half; ++i) {
        // q * cos + rotate(q) * sin, each product rounded as torch does (no fused multiply-add).
        const int i1 = args.neox ? i : 2 * i, i2 = args.neox ? i + half : 2 * i + 1;
        const float x1 = v[i1], x2 = v[i2], c = cs[static_cast<size_t>(i)], s = sn[static_cast<size_t>(i)];
        const float a = x1 * c, b = x2 * s, e = x2 * c, f = x1 * s;
        v[i1] = a - b;
        v[i2] = e + f;
      }
    }
  }
}

void kv_store(TensorView k_cache, TensorView v_cache, TensorView k, TensorView v, const int32_t* slot_mapping) {
  NB_CHECK(k.rank() == 3 && v.rank() == 3 && k_cache.rank() == 3 && v_cache.rank() == 3 && k.dim(0) == v.dim(0),
           "kv_store: k %s, v %s, caches %s %s", shape_to_string(k.shape).c_str(), shape_to_string(v.shape).c_str(),
           shape_to_string(k_cache.shape).c_str(), shape_to_string(v_cache.shape).c_str());
  NB_CHECK(k.dim(1) == k_cache.dim(1) && k.dim(2) == k_cache.dim(2) && v.dim(1) == v_cache.dim(1) &&
               v.dim(2) == v_cache.dim(2) && k_cache.dim(0) == v_cache.dim(0),
           "kv_store: head shapes differ from the cache");
  const Rows kr = as_rows(k), vr = as_rows(v);
  const int64_t kw = k.dim(1) * k.dim(2), vw = v.dim(1) * v.dim(2);
  const Rows kc{static_cast<uint8_t*>(k_cache.data), k_cache.dtype, k_cache.dim(0), kw, kw};
  const Rows vc{static_cast<uint8_t*>(v_cache.data), v_cache.dtype, v_cache.dim(0), vw, vw};
  for (int64_t t = 0; t < k.dim(0); ++t) {
    const int64_t slot = slot_mapping[t];
    if (slot < 0) continue;  // padding row
    NB_CHECK(slot < kc.rows, "kv_store: slot %lld outside the cache of %lld slots", static_cast<long long>(slot),
             static_cast<long long>(kc.rows));
    for (int64_t c = 0; c < kw; ++c) kc.set(slot, c, kr.get(t * k.dim(1) + c / k.dim(2), c % k.dim(2)));
    for (int64_t c = 0; c < vw; ++c) vc.set(slot, c, vr.get(t * v.dim(1) + c / v.dim(2), c % v.dim(2)));
  }
}

void check_attention_args(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                          const TensorView& v_cache, const ops::AttentionArgs& a) {
  NB_CHECK(q.rank() == 3 && out.rank() == 3 && k_cache.rank() == 3 && v_cache.rank() == 3 && q.is_contiguous() &&
               out.is_contiguous(),
           "attention: q %s, out %s must be contiguous [T, heads, d]", shape_to_string(q.shape).c_str(),
           shape_to_string(out.shape).c_str());
  NB_CHECK(q.dim(1) == a.num_heads && q.dim(2) == a.head_dim && out.dim(0) == q.dim(0) && out.dim(1) == a.num_heads &&
               out.dim(2) == a.v_head_dim,
           "attention: q %s, out %s, args heads %d head_dim %d v_head_dim %d", shape_to_string(q.shape).c_str(),
           shape_to_string(out.shape).c_str(), a.num_heads, a.head_dim, a.v_head_dim);
  NB_CHECK(k_cache.dim(1) == a.num_kv_heads && k_cache.dim(2) == a.head_dim && v_cache.dim(1) == a.num_kv_heads &&
               v_cache.dim(2) == a.v_head_dim && k_cache.dim(0) == v_cache.dim(0),
           "attention: caches %s %s, args kv_heads %d", shape_to_string(k_cache.shape).c_str(),
           shape_to_string(v_cache.shape).c_str(), a.num_kv_heads);
  NB_CHECK(a.num_kv_heads > 0 && a.num_heads % a.num_kv_heads == 0 && a.block_size > 0, "attention: %d heads over %d kv heads",
           a.num_heads, a.num_kv_heads);
  NB_CHECK(a.query_start[0] == 0 && a.query_start[a.num_seqs] == q.dim(0), "attention: query_start covers %d rows, q has %lld",
           a.query_start[a.num_seqs], static_cast<long long>(q.dim(0)));
  for (int s = 0; s < a.num_seqs; ++s) {
    const int ql = a.query_start[s + 1] - a.query_start[s], ctx = a.context_lens[s];
    NB_CHECK(ql >= 0 && ql <= ctx && ctx <= static_cast<int64_t>(a.max_blocks_per_seq) * a.block_size,
             "attention: sequence %d has %d queries, context %d, room for %d", s, ql, ctx, a.max_blocks_per_seq * a.block_size);
  }
}

void attention(TensorView out, TensorView q, TensorView k_cache, TensorView v_cache, const ops::AttentionArgs& a) {
  check_attention_args(out, q, k_cache, v_cache, a);
  const int64_t d = a.head_dim, dv = a.v_head_dim, kvh = a.num_kv_heads, group = a.num_heads / a.num_kv_heads;
  const int64_t slots = k_cache.dim(0);
  const Rows o = as_rows(out), qr = as_rows(q);  // rows = T * heads
  std::vector<double> p;
  for (int s = 0; s < a.num_seqs; ++s) {
    const int64_t q0 = a.query_start[s], ql = a.query_start[s + 1] - q0, ctx = a.context_lens[s];
    for (int64_t i = 0; i < ql; ++i) {
      const int64_t pos = ctx - ql + i;  // causal: keys 0..pos, the last sliding_window of them
      const int64_t lo = a.sliding_window > 0 ? std::max<int64_t>(0, pos - a.sliding_window + 1) : 0;
      for (int64_t h = 0; h < a.num_heads; ++h) {
        const int64_t qrow = (q0 + i) * a.num_heads + h, kh = h / group;
        p.assign(static_cast<size_t>(pos - lo + 1), 0.0);
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = lo; j <= pos; ++j) {
          const int64_t slot = kv_slot(a, s, j);
          NB_CHECK(slot >= 0 && slot < slots, "attention: slot %lld outside the cache", static_cast<long long>(slot));
          double dot = 0;
          for (int64_t c = 0; c < d; ++c)
            dot += static_cast<double>(qr.get(qrow, c)) * load_as_float(k_cache.data, k_cache.dtype, static_cast<size_t>((slot * kvh + kh) * d + c));
          p[static_cast<size_t>(j - lo)] = dot * a.scale;
          mx = std::max(mx, p[static_cast<size_t>(j - lo)]);
        }
        double sum = 0;
        for (double& e : p) sum += (e = std::exp(e - mx));
        for (int64_t c = 0; c < dv; ++c) {
          double acc = 0;
          for (int64_t j = lo; j <= pos; ++j) {
            const int64_t slot = kv_slot(a, s, j);
            acc += p[static_cast<size_t>(j - lo)] / sum *
                   load_as_float(v_cache.data, v_cache.dtype, static_cast<size_t>((slot * kvh + kh) * dv + c));
          }
          o.set(qrow, c, static_cast<float>(acc));
        }
      }
    }
  }
}

}  // namespace nb::cpu::ref
