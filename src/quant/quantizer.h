// Round-to-nearest weight quantization exactly as compressed-tensors computes it
// (quantization/utils/helpers.py `calculate_qparams` with min/max observed over each group, and
// lifecycle/forward.py `_quantize`), with the arithmetic done in the weight's dtype like torch:
//
//   mn = min(min(group), 0), mx = max(max(group), 0)              (exact)
//   symmetric:  s = r(max(|mn|, |mx|) / r((qmax - qmin) / 2)),     z = 0
//   asymmetric: s = r(r(mx - mn) / (qmax - qmin)),                 z = round(clamp(r(qmin - r(mn / s)), qmin, qmax))
//   s == 0 → finfo(dtype).eps
//   q = round(clamp(r(r(x / s) + z), qmin, qmax))                  (round half to even)
//
// r() rounds a float32 result to the weight dtype (BF16/F16; identity for F32): torch computes each
// BF16/F16 elementwise op in float32 and rounds the result.
#pragma once

#include <cstdint>

#include "core/status.h"
#include "core/tensor.h"
#include "quant/quantized_weight.h"

namespace nb::quant {

struct QuantizeSpec {
  int bits = 4;  // 4 or 8
  QuantStrategy strategy = QuantStrategy::kGroup;
  int64_t group_size = 128;  // group strategy only; in % group_size must be 0
  bool symmetric = true;
};

// w: [out, in] BF16/F16/F32 (contiguous). The scales keep w's dtype. Fails when the spec does not
// fit the shape (in % group_size != 0, like the library) or the dtype is not a float.
Result<QuantizedWeight> quantize_rtn(const TensorView& w, const QuantizeSpec& spec);

}  // namespace nb::quant
