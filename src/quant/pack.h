// Bit packing of small unsigned codes into 32-bit words (formats.md §2.5, §3.3, §4.3), and
// little helpers to read integer tensors out of a checkpoint (whose data may be unaligned).
//
// Every format stores codes LSB-first: element i of a run sits at bits [b*i, b*i + b - 1] of the
// run's bit stream. Two stream layouts exist for widths that do not divide 32:
//   kDense  — one continuous stream, ceil(n*b/32) words; an element may straddle two words
//             (compressed-tensors >= 0.18.0, GPTQ 3-bit).
//   kLegacy — floor(32/b) whole elements per word, the top 32 - b*floor(32/b) bits zero
//             (compressed-tensors < 0.18.0).
// For b in {1, 2, 4, 8} the two are byte-identical. Padding positions hold code 0.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/safetensors.h"

namespace nb::quant {

enum class BitPacking { kDense, kLegacy };

// Words needed for n codes of `bits` bits.
int64_t packed_words(int64_t n, int bits, BitPacking packing);
// Packs n codes (each < 2^bits) into packed_words(n) words; padding bits are 0.
void pack_codes(const uint8_t* codes, int64_t n, int bits, BitPacking packing, uint32_t* words);
// Unpacks the first n codes of a run of packed_words(n) words.
void unpack_codes(const uint32_t* words, int64_t n, int bits, BitPacking packing, uint8_t* codes);

// compressed-tensors chose the packing by library version: dense from 0.18.0 on.
// An empty or unparsable version means a recent writer (dense).
BitPacking ct_packing_for_version(const std::string& version);
// Compares dotted versions numerically ("0.9.4" < "0.12.2"); missing parts are 0, suffixes after
// the numbers ("0.12.2.dev3", "0.13.0a1") are ignored. Returns -1, 0 or 1.
int compare_versions(const std::string& a, const std::string& b);

// AWQ's interleaved nibble order: column 8c + j of a packed row lives in nibble kAwqReverse[j].
inline constexpr int kAwqReverse[8] = {0, 4, 1, 5, 2, 6, 3, 7};
// And nibble i holds column 8c + kAwqOrder[i].
inline constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

// Copies of integer tensors as little-endian values (the checkpoint data may be unaligned).
// The caller has already checked the dtype.
std::vector<uint32_t> read_u32(const TensorInfo& t);  // I32 / U32
std::vector<int64_t> read_i64(const TensorInfo& t);   // I64 or I32 (widened)
std::vector<int8_t> read_i8(const TensorInfo& t);     // I8 / U8
// A float tensor (BF16/F16/F32) copied into an owning tensor of the same dtype and `shape`.
HostTensor copy_tensor(const TensorInfo& t, const Shape& shape);

}  // namespace nb::quant
