// AWQ GEMM (AutoAWQ `version: "gemm"`, formats.md §4). 4-bit, asymmetric, contiguous groups.
//
// Tensors of module P (G = in / group_size; requires in % group_size == 0 and out % 8 == 0):
//   P.qweight I32 [in, out / 8]   unsigned codes packed along OUT, nibbles interleaved: column
//                                 8c + j of row k lives in nibble kAwqReverse[j] of word [k][c]
//   P.qzeros  I32 [G, out / 8]    same packing
//   P.scales  F16 [G, out]        (BF16/F32 accepted)
// W[n][k] = (u - uz) * s, no offset and no "minus one"; canonical q = u - 8, z = uz - 8.
#pragma once

#include <string>

#include "quant/quant_config.h"

namespace nb::quant {

Result<LinearLayout> describe_awq(const Checkpoint& ckpt, const QuantConfig& config, const std::string& prefix,
                                  int64_t out, int64_t in);
Result<QuantizedWeight> load_awq(const Checkpoint& ckpt, const QuantConfig& config, const std::string& prefix,
                                 int64_t out, int64_t in);

}  // namespace nb::quant
