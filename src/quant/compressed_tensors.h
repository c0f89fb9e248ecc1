// compressed-tensors `pack-quantized` (formats.md §2): reading one module into the canonical
// layout, and writing a canonical weight back as the library does.
//
// Tensors of module P: P.weight_packed I32 [out, ceil(in*b/32)] (codes + 2^(b-1), packed along in),
// P.weight_scale [out, G] / [out, 1] / [1], P.weight_shape I64 [2] = [out, in], and when asymmetric
// P.weight_zero_point I32 [ceil(out*b/32), G] packed along OUT (legacy < 0.9.4: I8 [out, G]; tensor
// strategy: I8 [1]); with actorder "group" P.weight_g_idx I32 [in].
#pragma once

#include <string>
#include <vector>

#include "quant/quant_config.h"

namespace nb::quant {

// Checks every tensor of module `prefix` against `scheme` and the logical shape (0, 0 = take the
// shape from weight_shape) and returns its layout; nothing is unpacked.
Result<LinearLayout> describe_compressed_tensors(const Checkpoint& ckpt, const QuantConfig& config,
                                                 const QuantScheme& scheme, const std::string& prefix, int64_t out,
                                                 int64_t in);
Result<QuantizedWeight> load_compressed_tensors(const Checkpoint& ckpt, const QuantConfig& config,
                                                const QuantScheme& scheme, const std::string& prefix, int64_t out,
                                                int64_t in);

// An owned tensor ready for SafetensorsWriter::add.
struct NamedTensor {
  std::string name;
  DType dtype = DType::kI32;
  Shape shape;
  std::vector<uint8_t> data;
};

// The tensors compressed-tensors (>= 0.9.4) writes for `w` under `prefix`: weight_packed,
// weight_scale (the scale dtype; [1] for tensor strategy), weight_shape, weight_zero_point when
// asymmetric (packed along out, or I8 [1] for tensor strategy), weight_g_idx when w has g_idx.
std::vector<NamedTensor> compressed_tensors_tensors(const std::string& prefix, const QuantizedWeight& w);

}  // namespace nb::quant
