// Helpers over the canonical plain quantized weight (ops::QuantWeightView) shared by every backend:
// validation before packing, and the scalar dequantizer that defines what a weight value is.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/ops.h"

namespace nb::ops {

// Checks the view for consistency: positive shape, bits 4 or 8, float scale dtype, group size and
// group count, non-null arrays, every g_idx entry in [0, num_groups). The message names the field,
// the expected and the actual value.
Status validate_quant_weight(const QuantWeightView& w);

// Bytes of the codes array: INT4 out * ceil(in/2), INT8 out * in.
size_t quant_codes_bytes(const QuantWeightView& w);

// Group of input column k: g_idx[k], or k / group_size.
inline int64_t quant_group(const QuantWeightView& w, int64_t k) {
  return w.g_idx ? w.g_idx[k] : k / w.group_size;
}

// Signed code q of element (n, k): INT4 nibbles are two's complement (-8..7), low nibble = even k.
inline int quant_code(const QuantWeightView& w, int64_t n, int64_t k) {
  if (w.bits == 8) return static_cast<int8_t>(w.codes[n * w.in + k]);
  const int64_t row_bytes = (w.in + 1) / 2;
  const uint8_t byte = w.codes[n * row_bytes + k / 2];
  const int nibble = (k & 1) ? (byte >> 4) : (byte & 0xF);
  return nibble >= 8 ? nibble - 16 : nibble;
}

// The dequantized weight W[n][k] = round_to_dtype(float(q - z) * s, scale dtype): q - z is a small
// exact integer, so this single rounding reproduces a framework computing in the scale dtype
// (formats.md §2.9). Defines the weight value every backend must use.
float dequant_weight(const QuantWeightView& w, int64_t n, int64_t k);

}  // namespace nb::ops
