// Fast row-wise ops: embedding, RMSNorm, add, mul, SiLU-gate, cast, RoPE, KV store, sampling.
// Vectorised over columns, threaded over rows once a call is large enough to pay for it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backends/cpu/fast_ops.h"
#include "backends/cpu/ref/ref_ops.h"
#include "backends/cpu/rows.h"
#include "backends/cpu/simd.h"
#include "core/thread_pool.h"

namespace nb::cpu::fast {

namespace {

// Threads over rows when there are at least ~64K elements; fn(r0, r1).
template <class Fn>
void for_rows(int64_t rows, int64_t cols, const Fn& fn) {
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, cols));
  ThreadPool::global().parallel_for(rows, grain, fn);
}

// dst[0..n) = src[0..n) converted from T to F32.
template <DType T>
void widen(float* dst, const void* src, int64_t n) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) _mm256_storeu_ps(dst + c, simd::load8<T>(src, c));
  for (; c < n; ++c) dst[c] = load_as_float(src, T, static_cast<size_t>(c));
}

void widen_any(float* dst, const void* src, DType t, int64_t n) {
  switch (t) {
    case DType::kF32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); break;
    case DType::kBF16: widen<DType::kBF16>(dst, src, n); break;
    case DType::kF16: widen<DType::kF16>(dst, src, n); break;
    default: NB_CHECK(false, "expected BF16/F16/F32, got %s", dtype_name(t));
  }
}

void narrow_bf16(uint16_t* dst, const float* src, int64_t n) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + c), simd::f32_to_bf16x8(_mm256_loadu_ps(src + c)));
  for (; c < n; ++c) dst[c] = float_to_bf16(src[c]);
}

void narrow_f16(uint16_t* dst, const float* src, int64_t n) {
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + c), _mm256_cvtps_ph(_mm256_loadu_ps(src + c), _MM_FROUND_TO_NEAREST_INT));
  for (; c < n; ++c) dst[c] = float_to_fp16(src[c]);
}

bool same_rows(const Rows& a, const Rows& b) { return a.rows == b.rows && a.cols == b.cols; }

}  // namespace

void embedding(TensorView out, TensorView table, const int32_t* ids, int64_t num_tokens) {
  const Rows o = as_rows(out), t = as_rows(table);
  NB_CHECK(o.rows >= num_tokens && o.cols == t.cols && o.dtype == DType::kF32, "embedding: out %s, table %s",
           shape_to_string(out.shape).c_str(), shape_to_string(table.shape).c_str());
  for (int64_t i = 0; i < num_tokens; ++i)
    NB_CHECK(ids[i] >= 0 && ids[i] < t.rows, "embedding: id %d outside [0, %lld)", ids[i], static_cast<long long>(t.rows));
  for_rows(num_tokens, o.cols, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) widen_any(o.row<float>(i), t.row_ptr(ids[i]), t.dtype, o.cols);
  });
}

void rms_norm(TensorView out, TensorView x, TensorView weight, float eps) {
  const Rows o = as_rows(out), xr = as_rows(x);
  NB_CHECK(same_rows(o, xr) && weight.numel() == xr.cols && o.dtype == DType::kF32 && xr.dtype == DType::kF32,
           "rms_norm: out %s, x %s, weight %s", shape_to_string(out.shape).c_str(), shape_to_string(x.shape).c_str(),
           shape_to_string(weight.shape).c_str());
  const int64_t h = xr.cols;
  std::vector<float> w(static_cast<size_t>(h));
  widen_any(w.data(), weight.data, weight.dtype, h);
  for_rows(xr.rows, h, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xp = xr.row<float>(r);
      float* op = o.row<float>(r);
      __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
      int64_t c = 0;
      for (; c + 16 <= h; c += 16) {
        const __m256 a = _mm256_loadu_ps(xp + c), b = _mm256_loadu_ps(xp + c + 8);
        s0 = _mm256_fmadd_ps(a, a, s0);
        s1 = _mm256_fmadd_ps(b, b, s1);
      }
      float ss = simd::hsum(_mm256_add_ps(s0, s1));
      for (; c < h; ++c) ss += xp[c] * xp[c];
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
      const __m256 iv = _mm256_set1_ps(inv);
      for (c = 0; c + 8 <= h; c += 8)
        _mm256_storeu_ps(op + c, _mm256_mul_ps(_mm256_loadu_ps(w.data() + c), _mm256_mul_ps(_mm256_loadu_ps(xp + c), iv)));
      for (; c < h; ++c) op[c] = w[static_cast<size_t>(c)] * (xp[c] * inv);
    }
  });
}

void add(TensorView out, TensorView a, TensorView b) {
  const Rows o = as_rows(out), ar = as_rows(a), br = as_rows(b);
  NB_CHECK(same_rows(o, ar) && same_rows(ar, br) && o.dtype == DType::kF32 && ar.dtype == DType::kF32 && br.dtype == DType::kF32,
           "add: %s = %s + %s", shape_to_string(out.shape).c_str(), shape_to_string(a.shape).c_str(), shape_to_string(b.shape).c_str());
  for_rows(o.rows, o.cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *x = ar.row<float>(r), *y = br.row<float>(r);
      float* z = o.row<float>(r);
      int64_t c = 0;
      for (; c + 8 <= o.cols; c += 8) _mm256_storeu_ps(z + c, _mm256_add_ps(_mm256_loadu_ps(x + c), _mm256_loadu_ps(y + c)));
      for (; c < o.cols; ++c) z[c] = x[c] + y[c];
    }
  });
}

void mul(TensorView out, TensorView a, TensorView b) {
  const Rows o = as_rows(out), ar = as_rows(a), br = as_rows(b);
  const bool row_scalar = br.cols == 1 && br.rows == ar.rows && ar.cols != 1;
  NB_CHECK(same_rows(o, ar) && br.rows == ar.rows && (row_scalar || br.cols == ar.cols) && o.dtype == DType::kF32 &&
               ar.dtype == DType::kF32 && br.dtype == DType::kF32,
           "mul: %s = %s * %s", shape_to_string(out.shape).c_str(), shape_to_string(a.shape).c_str(), shape_to_string(b.shape).c_str());
  for_rows(o.rows, o.cols, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *x = ar.row<float>(r), *y = br.row<float>(r);
      float* z = o.row<float>(r);
      int64_t c = 0;
      if (row_scalar) {
        const __m256 s = _mm256_set1_ps(y[0]);
        for (; c + 8 <= o.cols; c += 8) _mm256_storeu_ps(z + c, _mm256_mul_ps(_mm256_loadu_ps(x + c), s));
        for (; c < o.cols; ++c) z[c] = x[c] * y[0];
        continue;
      }
      for (; c + 8 <= o.cols; c += 8) _mm256_storeu_ps(z + c, _mm256_mul_ps(_mm256_loadu_ps(x + c), _mm256_loadu_ps(y + c)));
      for (; c < o.cols; ++c) z[c] = x[c] * y[c];
    }
  });
}

void silu_mul(TensorView out, TensorView gate, TensorView up) {
  const Rows o = as_rows(out), g = as_rows(gate), u = as_rows(up);
  NB_CHECK(same_rows(o, g) && same_rows(g, u) && o.dtype == DType::kF32 && g.dtype == DType::kF32 && u.dtype == DType::kF32,
           "silu_mul: %s, %s, %s", shape_to_string(out.shape).c_str(), shape_to_string(gate.shape).c_str(),
           shape_to_string(up.shape).c_str());
  for_rows(o.rows, o.cols, [&](int64_t r0, int64_t r1) {
    const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
    for (int64_t r = r0; r < r1; ++r) {
      const float *gp = g.row<float>(r), *up_ = u.row<float>(r);
      float* op = o.row<float>(r);
      int64_t c = 0;
      for (; c + 8 <= o.cols; c += 8) {
        const __m256 x = _mm256_loadu_ps(gp + c);
        const __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, simd::exp(_mm256_xor_ps(x, sign))));
        _mm256_storeu_ps(op + c, _mm256_mul_ps(s, _mm256_loadu_ps(up_ + c)));
      }
      for (; c < o.cols; ++c) op[c] = gp[c] / (1.0f + std::exp(-gp[c])) * up_[c];
    }
  });
}

void cast(TensorView out, TensorView in) {
  const Rows o = as_rows(out), i = as_rows(in);
  NB_CHECK(same_rows(o, i) && is_float16_or_32(o.dtype) && is_float16_or_32(i.dtype), "cast: %s %s <- %s %s",
           dtype_name(out.dtype), shape_to_string(out.shape).c_str(), dtype_name(in.dtype), shape_to_string(in.shape).c_str());
  for_rows(o.rows, o.cols, [&](int64_t r0, int64_t r1) {
    std::vector<float> tmp;
    for (int64_t r = r0; r < r1; ++r) {
      if (o.dtype == i.dtype) {
        std::memcpy(o.row_ptr(r), i.row_ptr(r), dtype_bytes(o.dtype, static_cast<size_t>(o.cols)));
      } else if (o.dtype == DType::kF32) {
        widen_any(o.row<float>(r), i.row_ptr(r), i.dtype, o.cols);
      } else {
        const float* src = i.row<float>(r);
        if (i.dtype != DType::kF32) {  // BF16 <-> F16 through F32 (exact widening, one rounding)
          tmp.resize(static_cast<size_t>(o.cols));
          widen_any(tmp.data(), i.row_ptr(r), i.dtype, o.cols);
          src = tmp.data();
        }
        if (o.dtype == DType::kBF16) narrow_bf16(o.row<uint16_t>(r), src, o.cols);
        else narrow_f16(o.row<uint16_t>(r), src, o.cols);
      }
    }
  });
}

void rope(TensorView x, const int32_t* positions, const ops::RopeArgs& args) {
  int64_t s0 = 0, s1 = 0;
  ref::rope_strides(x, args, &s0, &s1);
  const int64_t tokens = x.dim(0), heads = x.dim(1), d = x.dim(2);
  const int half = args.rotary_dim / 2;
  ThreadPool::global().parallel_for(tokens, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, heads * d)), [&](int64_t t0, int64_t t1) {
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
    for (int64_t t = t0; t < t1; ++t) {
      ref::rope_cos_sin(positions[t], args, cs.data(), sn.data());
      for (int64_t h = 0; h < heads; ++h) {
        float* v = x.as<float>() + t * s0 + h * s1;
        int i = 0;
        if (args.neox) {  // same products and sums as the reference: bit-identical
          for (; i + 8 <= half; i += 8) {
            const __m256 x1 = _mm256_loadu_ps(v + i), x2 = _mm256_loadu_ps(v + i + half);
            const __m256 c = _mm256_loadu_ps(cs.data() + i), s = _mm256_loadu_ps(sn.data() + i);
            _mm256_storeu_ps(v + i, _mm256_sub_ps(_mm256_mul_ps(x1, c), _mm256_mul_ps(x2, s)));
            _mm256_storeu_ps(v + i + half, _mm256_add_ps(_mm256_mul_ps(x2, c), _mm256_mul_ps(x1, s)));
          }
        }
        for (; i < half; ++i) {
          const int i1 = args.neox ? i : 2 * i, i2 = args.neox ? i + half : 2 * i + 1;
          const float x1 = v[i1], x2 = v[i2], c = cs[static_cast<size_t>(i)], s = sn[static_cast<size_t>(i)];
          const float a = x1 * c, b = x2 * s, e = x2 * c, f = x1 * s;
          v[i1] = a - b;
          v[i2] = e + f;
        }
      }
    }
  });
}

void kv_store(TensorView k_cache, TensorView v_cache, TensorView k, TensorView v, const int32_t* slot_mapping) {
  if (k_cache.dtype != k.dtype || v_cache.dtype != v.dtype || !k.is_contiguous() || !v.is_contiguous()) {
    ref::kv_store(k_cache, v_cache, k, v, slot_mapping);
    return;
  }
  NB_CHECK(k.rank() == 3 && v.rank() == 3 && k_cache.rank() == 3 && v_cache.rank() == 3 && k.dim(0) == v.dim(0) &&
               k.dim(1) == k_cache.dim(1) && k.dim(2) == k_cache.dim(2) && v.dim(1) == v_cache.dim(1) &&
               v.dim(2) == v_cache.dim(2) && k_cache.dim(0) == v_cache.dim(0),
           "kv_store: k %s, v %s, caches %s %s", shape_to_string(k.shape).c_str(), shape_to_string(v.shape).c_str(),
           shape_to_string(k_cache.shape).c_str(), shape_to_string(v_cache.shape).c_str());
  const size_t kb = dtype_bytes(k.dtype, static_cast<size_t>(k.dim(1) * k.dim(2)));
  const size_t vb = dtype_bytes(v.dtype, static_cast<size_t>(v.dim(1) * v.dim(2)));
  for (int64_t t = 0; t < k.dim(0); ++t) {
    const int64_t slot = slot_mapping[t];
    if (slot < 0) continue;
    NB_CHECK(slot < k_cache.dim(0), "kv_store: slot %lld outside the cache of %lld slots", static_cast<long long>(slot),
             static_cast<long long>(k_cache.dim(0)));
    std::memcpy(static_cast<uint8_t*>(k_cache.data) + static_cast<size_t>(slot) * kb, static_cast<const uint8_t*>(k.data) + t * kb, kb);
    std::memcpy(static_cast<uint8_t*>(v_cache.data) + static_cast<size_t>(slot) * vb, static_cast<const uint8_t*>(v.data) + t * vb, vb);
  }
}

void sample(int32_t* out_ids, TensorView logits, const std::vector<ops::SamplingParams>& params, uint64_t step) {
  const Rows l = as_rows(logits);
  NB_CHECK(l.dtype == DType::kF32, "sample: logits must be F32, got %s", dtype_name(l.dtype));
  NB_CHECK(params.size() == static_cast<size_t>(l.rows) || params.size() == 1, "sample: %zu params for %lld rows",
           params.size(), static_cast<long long>(l.rows));
  ThreadPool::global().parallel_for(l.rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      out_ids[r] = ref::sample_row(l.row<float>(r), l.cols, params[params.size() == 1 ? 0 : static_cast<size_t>(r)], step, true);
  });
}

}  // namespace nb::cpu::fast
