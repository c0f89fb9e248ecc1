// The canonical plain quantized weight (design.md "Canonical INT4 layout"): every checkpoint
// format (compressed-tensors, GPTQ, AWQ) unpacks into this, backends repack it for their kernels.
// It is sliceable along `out` and `in` (tensor parallelism) and keeps its logical shape and origin.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace nb::quant {

enum class QuantStrategy { kTensor, kChannel, kGroup };
const char* strategy_name(QuantStrategy s);  // "tensor", "channel", "group"

struct QuantizedWeight {
  // Logical shape from metadata (weight_shape / the model config), never from packed buffers.
  int64_t out = 0, in = 0;
  int bits = 4;  // 4 or 8
  QuantStrategy strategy = QuantStrategy::kGroup;
  // Columns per group: the group length for kGroup; `in` for kChannel and kTensor.
  int64_t group_size = 0;
  // G = ceil(in / group_size) for contiguous groups; 1 for channel/tensor. With g_idx, the number
  // of scale columns (a slice along `in` keeps every group, as vLLM does for act-order).
  int64_t num_groups = 0;
  // No zero points (implicit 0 in the signed domain). GPTQ symmetric checkpoints are loaded this
  // way: their qzeros are ignored (implicit 2^(b-1) unsigned), exactly as vLLM's gptq_marlin does.
  bool symmetric = true;
  // Signed codes, row-major [out, in]. INT4: two per byte, low nibble = even column, each a
  // two's-complement nibble, row stride ceil(in/2) bytes (an odd `in` leaves the last high nibble
  // 0). INT8: one int8 per byte, row stride `in`.
  std::vector<uint8_t> codes;
  // [out, G], dtype as stored in the checkpoint (BF16/F16/F32); tensor strategy expanded to [out, 1].
  HostTensor scales;
  // [out, G] signed zero points in the code domain; empty when symmetric.
  std::vector<int8_t> zeros;
  // [in] group of each input column (activation ordering); empty when groups are contiguous.
  std::vector<int32_t> g_idx;
  // Where it came from: "compressed-tensors pack-quantized 0.12.2", "gptq", "gptq_v2", "awq gemm",
  // "nibble rtn", ...
  std::string source_format;

  int64_t row_bytes() const { return bits == 4 ? (in + 1) / 2 : in; }
  int8_t code(int64_t o, int64_t c) const {
    if (bits == 8) return static_cast<int8_t>(codes[static_cast<size_t>(o * in + c)]);
    uint8_t byte = codes[static_cast<size_t>(o * row_bytes() + c / 2)];
    int nib = (c & 1) ? (byte >> 4) : (byte & 0xF);
    return static_cast<int8_t>(nib >= 8 ? nib - 16 : nib);
  }
  void set_code(int64_t o, int64_t c, int q) {
    if (bits == 8) {
      codes[static_cast<size_t>(o * in + c)] = static_cast<uint8_t>(static_cast<int8_t>(q));
      return;
    }
    uint8_t& byte = codes[static_cast<size_t>(o * row_bytes() + c / 2)];
    uint8_t nib = static_cast<uint8_t>(q) & 0xF;
    byte = (c & 1) ? static_cast<uint8_t>((byte & 0x0F) | (nib << 4)) : static_cast<uint8_t>((byte & 0xF0) | nib);
  }
  int64_t group_of(int64_t c) const { return g_idx.empty() ? c / group_size : g_idx[static_cast<size_t>(c)]; }
  int zero(int64_t o, int64_t g) const { return zeros.empty() ? 0 : zeros[static_cast<size_t>(o * num_groups + g)]; }
  float scale(int64_t o, int64_t g) const;
  DType scale_dtype() const { return scales.dtype(); }
  int qmin() const { return -(1 << (bits - 1)); }
  int qmax() const { return (1 << (bits - 1)) - 1; }

  // Checks that every buffer has the size the fields say (a programming-error guard for code that
  // builds these by hand; loaders validate the checkpoint before building one).
  Status validate() const;
  QuantizedWeight clone() const;
  // "int4 group 128 asym act-order" for messages and `nibble inspect`.
  std::string describe() const;
};

// A zero-filled weight with every buffer allocated: codes, scales [out, G] of `scale_dtype`,
// zeros (when !symmetric). group_size <= 0 or strategy channel/tensor means group_size = in.
QuantizedWeight make_quantized_weight(int64_t out, int64_t in, int bits, QuantStrategy strategy, int64_t group_size,
                                      bool symmetric, DType scale_dtype);

// W[o][c] = (q - z) * s computed as float(q - z) * float(s) — exact in FP32 for BF16/F16 scales —
// and rounded once to `out_dtype` (BF16/F16/F32). With out_dtype == the scale dtype this is
// bit-exact with compressed-tensors' decompressor (formats.md §2.9). Returns [out, in].
HostTensor dequantize(const QuantizedWeight& w, DType out_dtype);
// The same product, unrounded: [out * in] floats.
std::vector<float> dequantize_float(const QuantizedWeight& w);

// Rows [begin, begin + count) (column-parallel split). Zero points are sliced with their rows.
Result<QuantizedWeight> slice_out(const QuantizedWeight& w, int64_t begin, int64_t count);
// Columns [begin, begin + count) (row-parallel split). With contiguous groups `begin` must start a
// group and the slice must end on a group boundary or at `in`; channel/tensor weights slice
// anywhere. With g_idx every scale column is kept and g_idx is sliced.
Result<QuantizedWeight> slice_in(const QuantizedWeight& w, int64_t begin, int64_t count);

}  // namespace nb::quant
