#include "ops/quant_weight.h"

namespace nb::ops {

size_t quant_codes_bytes(const QuantWeightView& w) {
  const int64_t row = w.bits == 4 ? (w.in + 1) / 2 : w.in;
  return static_cast<size_t>(w.out * row);
}

Status validate_quant_weight(const QuantWeightView& w) {
  if (w.out <= 0 || w.in <= 0)
    return invalid_argument(strformat("quantized weight: logical shape must be positive, got [%lld, %lld]",
                                      static_cast<long long>(w.out), static_cast<long long>(w.in)));
  if (w.bits != 4 && w.bits != 8)
    return unsupported(strformat("quantized weight [%lld, %lld]: bits must be 4 or 8, got %d",
                                 static_cast<long long>(w.out), static_cast<long long>(w.in), w.bits));
  if (w.scale_dtype != DType::kBF16 && w.scale_dtype != DType::kF16 && w.scale_dtype != DType::kF32)
    return unsupported(strformat("quantized weight: scale dtype must be BF16, F16 or F32, got %s",
                                 dtype_name(w.scale_dtype)));
  if (!w.codes || !w.scales) return invalid_argument("quantized weight: codes or scales pointer is null");
  if (w.group_size <= 0)
    return invalid_argument(strformat("quantized weight: group_size must be positive, got %lld",
                                      static_cast<long long>(w.group_size)));
  if (w.num_groups <= 0)
    return invalid_argument(strformat("quantized weight: num_groups must be positive, got %lld",
                                      static_cast<long long>(w.num_groups)));
  if (!w.g_idx) {
    const int64_t expect = (w.in + w.group_size - 1) / w.group_size;
    if (w.num_groups != expect)
      return invalid_argument(strformat("quantized weight [%lld, %lld]: group_size %lld implies %lld groups, got %lld",
                                        static_cast<long long>(w.out), static_cast<long long>(w.in),
                                        static_cast<long long>(w.group_size), static_cast<long long>(expect),
                                        static_cast<long long>(w.num_groups)));
    return Status::ok();
  }
  for (int64_t k = 0; k < w.in; ++k) {
    if (w.g_idx[k] < 0 || w.g_idx[k] >= w.num_groups)
      return invalid_argument(strformat("quantized weight: g_idx[%lld] = %d, expected a group in [0, %lld)",
                                        static_cast<long long>(k), w.g_idx[k], static_cast<long long>(w.num_groups)));
  }
  return Status::ok();
}

float dequant_weight(const QuantWeightView& w, int64_t n, int64_t k) {
  const int64_t g = quant_group(w, k);
  const int64_t gi = n * w.num_groups + g;
  const int z = w.zeros ? w.zeros[gi] : 0;
  const float s = load_as_float(w.scales, w.scale_dtype, static_cast<size_t>(gi));
  return round_to_dtype(static_cast<float>(quant_code(w, n, k) - z) * s, w.scale_dtype);
}

}  // namespace nb::ops

namespace nb::ops {

QuantWeightView expert_view(const QuantWeightView& stack, int64_t e) {
  QuantWeightView v = stack;
  const size_t codes = quant_codes_bytes(stack);
  const size_t cells = static_cast<size_t>(stack.out * stack.num_groups);
  v.codes = stack.codes + static_cast<size_t>(e) * codes;
  v.scales = static_cast<const uint8_t*>(stack.scales) + static_cast<size_t>(e) * dtype_bytes(stack.scale_dtype, cells);
  if (stack.zeros) v.zeros = stack.zeros + static_cast<size_t>(e) * cells;
  if (stack.g_idx) v.g_idx = stack.g_idx + e * stack.in;
  return v;
}

}  // namespace nb::ops
