#include "quant/quantizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/thread_pool.h"

namespace nb::quant {

namespace {

// torch.finfo(dtype).eps: the replacement for a zero scale.
float dtype_eps(DType t) {
  switch (t) {
    case DType::kBF16: return 0.0078125f;        // 2^-7
    case DType::kF16: return 0.0009765625f;      // 2^-10
    default: return 1.1920928955078125e-07f;     // 2^-23
  }
}

void store_scale(HostTensor& scales, size_t i, float v) {
  switch (scales.dtype()) {
    case DType::kBF16: scales.as<uint16_t>()[i] = float_to_bf16(v); break;
    case DType::kF16: scales.as<uint16_t>()[i] = float_to_fp16(v); break;
    default: scales.as<float>()[i] = v; break;
  }
}

struct QParams {
  float scale;  // already a value of the weight dtype
  int zero;
};

// calculate_qparams for one group with observed min/max `lo`/`hi` (values of dtype t).
QParams qparams(float lo, float hi, int qmin, int qmax, bool symmetric, DType t) {
  auto r = [t](float v) { return round_to_dtype(v, t); };
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  const float range = r(static_cast<float>(qmax - qmin));
  QParams p{0.0f, 0};
  if (symmetric) {
    p.scale = r(std::max(std::fabs(lo), std::fabs(hi)) / r(range / 2.0f));
  } else {
    p.scale = r(r(hi - lo) / range);
    if (p.scale != 0.0f) {  // an all-zero group gives 0/0 in the library; any zero point dequantizes to 0
      float z = r(static_cast<float>(qmin) - r(lo / p.scale));
      z = std::clamp(z, static_cast<float>(qmin), static_cast<float>(qmax));
      p.zero = static_cast<int>(std::nearbyint(z));
    }
  }
  if (p.scale == 0.0f) p.scale = dtype_eps(t);
  return p;
}

// _quantize: q = round(clamp(r(r(x / s) + z), qmin, qmax)).
int quantize_one(float x, const QParams& p, int qmin, int qmax, DType t) {
  float v = round_to_dtype(x / p.scale, t);
  v = round_to_dtype(v + static_cast<float>(p.zero), t);
  v = std::clamp(v, static_cast<float>(qmin), static_cast<float>(qmax));
  return static_cast<int>(std::nearbyint(v));
}

// Quantizes the columns [c0, c1) of rows [r0, r1) as one group whose scale/zero go to (o, g) for
// every row o in [r0, r1) (per-row groups have r1 = r0 + 1).
void quantize_block(const TensorView& w, int64_t r0, int64_t r1, int64_t c0, int64_t c1, int64_t g,
                    QuantizedWeight* q) {
  const int64_t in = w.shape[1];
  float lo = INFINITY, hi = -INFINITY;
  for (int64_t o = r0; o < r1; ++o)
    for (int64_t c = c0; c < c1; ++c) {
      const float x = load_as_float(w.data, w.dtype, static_cast<size_t>(o * in + c));
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
  const QParams p = qparams(lo, hi, q->qmin(), q->qmax(), q->symmetric, w.dtype);
  for (int64_t o = r0; o < r1; ++o) {
    store_scale(q->scales, static_cast<size_t>(o * q->num_groups + g), p.scale);
    if (!q->symmetric) q->zeros[static_cast<size_t>(o * q->num_groups + g)] = static_cast<int8_t>(p.zero);
    for (int64_t c = c0; c < c1; ++c)
      q->set_code(o, c, quantize_one(load_as_float(w.data, w.dtype, static_cast<size_t>(o * in + c)), p, q->qmin(),
                                     q->qmax(), w.dtype));
  }
}

}  // namespace

Result<QuantizedWeight> quantize_rtn(const TensorView& w, const QuantizeSpec& spec) {
  if (w.rank() != 2 || !w.is_contiguous() || w.device != Device::kCpu)
    return invalid_argument(strformat("quantize: expected a contiguous 2-D host tensor, got shape %s",
                                      shape_to_string(w.shape).c_str()));
  if (w.dtype != DType::kBF16 && w.dtype != DType::kF16 && w.dtype != DType::kF32)
    return invalid_argument(strformat("quantize: expected a BF16, F16 or F32 weight, got %s", dtype_name(w.dtype)));
  if (spec.bits != 4 && spec.bits != 8)
    return invalid_argument(strformat("quantize: %d-bit quantization is not supported (4 or 8)", spec.bits));
  const int64_t out = w.shape[0], in = w.shape[1];
  if (out <= 0 || in <= 0) return invalid_argument("quantize: empty weight " + shape_to_string(w.shape));
  if (spec.strategy == QuantStrategy::kGroup && (spec.group_size <= 0 || in % spec.group_size != 0))
    return invalid_argument(strformat("quantize: in=%lld is not a multiple of the group size %lld",
                                      static_cast<long long>(in), static_cast<long long>(spec.group_size)));
  QuantizedWeight q =
      make_quantized_weight(out, in, spec.bits, spec.strategy, spec.group_size, spec.symmetric, w.dtype);
  q.source_format = "nibble rtn";
  if (spec.strategy == QuantStrategy::kTensor) {
    quantize_block(w, 0, out, 0, in, 0, &q);
    return q;
  }
  ThreadPool::global().parallel_for(out, 4, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o)
      for (int64_t g = 0; g < q.num_groups; ++g)
        quantize_block(w, o, o + 1, g * q.group_size, std::min(in, (g + 1) * q.group_size), g, &q);
  });
  return q;
}

}  // namespace nb::quant
