// Element types and the bf16 / fp16 conversions every layer uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace nb {

// Every safetensors dtype (formats.md §1.2). Sub-byte and exotic types are carried so headers
// validate; only the common ones are computed with.
enum class DType : uint8_t {
  kBool, kF4, kF6E2M3, kF6E3M2, kU8, kI8, kF8E5M2, kF8E4M3, kF8E8M0, kF8E4M3FNUZ, kF8E5M2FNUZ,
  kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kC64, kF64, kI64, kU64,
};

// Size in bits (4 for F4, 6 for F6_*).
int dtype_bits(DType t);
// Bytes for n elements; only valid when n * bits is a multiple of 8.
inline size_t dtype_bytes(DType t, size_t n) { return n * static_cast<size_t>(dtype_bits(t)) / 8; }
// The safetensors spelling ("BF16", "F8_E4M3", ...).
const char* dtype_name(DType t);
// Parses a safetensors dtype string; false when unknown.
bool parse_dtype(std::string_view s, DType* out);
inline bool is_float_dtype(DType t) { return t == DType::kF16 || t == DType::kBF16 || t == DType::kF32 || t == DType::kF64; }

// bf16: upper 16 bits of an fp32. Conversion rounds to nearest even; NaN stays NaN.
inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

// IEEE half. Conversion rounds to nearest even, handles subnormals, inf and NaN.
float fp16_to_float(uint16_t h);
uint16_t float_to_fp16(float f);

// Reads element i of a float-like buffer (F16/BF16/F32/F64) as float.
float load_as_float(const void* data, DType t, size_t i);
// Rounds a float to dtype t and back (for bit-exact emulation of "compute then cast").
float round_to_dtype(float f, DType t);

}  // namespace nb
