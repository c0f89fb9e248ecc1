// GPTQ (AutoGPTQ / GPTQModel, formats.md §3): checkpoint formats "gptq" (v1: zero points stored
// minus one) and "gptq_v2" (stored as-is).
//
// Tensors of module P (pf = 32 / bits codes per int32, G = ceil(in / group_size), 1 per channel):
//   P.qweight I32 [in / pf, out]   unsigned codes packed along IN (8 input rows of one column per word)
//   P.qzeros  I32 [G, out / pf]    unsigned zero points packed along OUT
//   P.scales  F16 [G, out]         (BF16/F32 accepted)
//   P.g_idx   I32 [in]             group of each input row; used only with desc_act (as vLLM does)
// Canonical codes: q = u - 2^(b-1); asymmetric zero points z = decoded - 2^(b-1). Symmetric
// checkpoints ignore qzeros (implicit 2^(b-1)), like vLLM's gptq_marlin.
#pragma once

#include <string>

#include "quant/quant_config.h"

namespace nb::quant {

Result<LinearLayout> describe_gptq(const Checkpoint& ckpt, const QuantConfig& config, const std::string& prefix,
                                   int64_t out, int64_t in);
Result<QuantizedWeight> load_gptq(const Checkpoint& ckpt, const QuantConfig& config, const std::string& prefix,
                                  int64_t out, int64_t in);

}  // namespace nb::quant
