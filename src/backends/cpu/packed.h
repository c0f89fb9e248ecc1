// Kernel layouts of the fast CPU backend (see README.md in this folder for the full description).
//
// Quantized weights [out, in] are repacked so that the inner loop dequantizes 32 input columns (a
// "chunk") with a handful of AVX2 instructions and multiplies them with 32 contiguous activations:
// - input columns are regrouped so that every group is contiguous (argsort of g_idx, as vLLM does)
//   and each group is padded to a multiple of 32 columns; the activations are gathered the same way
//   per call (skipped when the layout is the identity: no g_idx, group size and in multiples of 32);
// - INT4 with BF16/F16 scales: 16 bytes per chunk, nibbles placed so that two byte-table lookups
//   (vpshufb) of a per-(row, group) table of the 16 dequantized values give four 8-float vectors in
//   column order; the table holds round_to_dtype((u - 8 - z) * s), exactly the reference value;
// - INT8 (and INT4 with F32 scales, widened to INT8 codes): 32 signed bytes per chunk in column order,
//   dequantized as round_to_dtype((q - z) * s);
// - scales and zero points converted to F32 at pack time, [out, G]; for INT4 the distinct tables are
//   also built at pack time (a weight has a few thousand distinct (scale, zero) pairs at most) and
//   each (row, group) keeps a 16-bit table index, so the inner loop only loads its table.
// Dense weights keep their dtype and row-major [out, in] layout (bf16 is widened on the fly).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "ops/ops.h"

namespace nb::cpu {

constexpr int64_t kChunk = 32;  // packed columns per chunk

enum class QuantKernel : uint8_t {
  kInt4Bf16,  // INT4 codes, BF16 scales: table lookups, bf16 bit assembly
  kInt4F16,   // INT4 codes, F16 scales: table lookups, vcvtph2ps
  kInt8,      // INT8 codes (or widened INT4): arithmetic dequantization, rounded to scale_dtype
};

class CpuQuantWeight : public ops::PackedWeight {
 public:
  QuantKernel kernel = QuantKernel::kInt8;
  DType scale_dtype = DType::kBF16;
  int64_t groups = 0;                // G
  int64_t kp = 0;                    // packed columns (multiple of 32)
  int64_t row_bytes = 0;             // bytes of one packed row of codes
  std::vector<int64_t> group_chunk;  // [G + 1]: chunks of group g are [group_chunk[g], group_chunk[g+1])
  std::vector<int32_t> chunk_group;  // [kp / 32]: group of each chunk
  std::vector<int32_t> src_col;      // [kp]: input column of each packed column (-1 = padding); empty = identity
  HostTensor codes;                  // [out, row_bytes]
  std::vector<float> scales, zeros;  // [out, G] (zeros are 0 when symmetric)
  // INT4: the distinct dequantization tables of this weight (one per distinct (scale, zero) pair,
  // 64 bytes each: low-byte plane and high-byte plane, each duplicated in both 128-bit lanes) and the
  // table of each (row, group). Empty when there are too many distinct pairs: tables are then built
  // from scales/zeros at run time.
  HostTensor tables;                 // [entries, 64] bytes
  std::vector<uint16_t> table_index; // [out, G]

  bool identity() const { return src_col.empty(); }
  bool has_tables() const { return !table_index.empty(); }
  const uint8_t* row(int64_t n) const { return codes.as<uint8_t>() + n * row_bytes; }
};

class CpuDenseWeight : public ops::PackedWeight {
 public:
  DType dtype = DType::kF32;
  HostTensor data;  // [out, in] as given
};

Result<std::unique_ptr<ops::PackedWeight>> pack_quantized_fast(const ops::QuantWeightView& w);
Result<std::unique_ptr<ops::PackedWeight>> pack_dense_fast(const TensorView& w);

// Where column k (0..31) of a chunk lives in the 16 code bytes of an INT4 kernel: byte index and
// nibble (0 = low, 1 = high). Mirrors the register order of the dequantization sequence.
void int4_chunk_slot(QuantKernel kernel, int k, int* byte, int* nibble);

}  // namespace nb::cpu
