#include "core/dtype.h"

#include <cmath>

namespace nb {

namespace {
struct DTypeInfo {
  DType type;
  const char* name;
  int bits;
};
constexpr DTypeInfo kInfos[] = {
    {DType::kBool, "BOOL", 8},          {DType::kF4, "F4", 4},
    {DType::kF6E2M3, "F6_E2M3", 6},     {DType::kF6E3M2, "F6_E3M2", 6},
    {DType::kU8, "U8", 8},              {DType::kI8, "I8", 8},
    {DType::kF8E5M2, "F8_E5M2", 8},     {DType::kF8E4M3, "F8_E4M3", 8},
    {DType::kF8E8M0, "F8_E8M0", 8},     {DType::kF8E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {DType::kF8E5M2FNUZ, "F8_E5M2FNUZ", 8}, {DType::kI16, "I16", 16},
    {DType::kU16, "U16", 16},           {DType::kF16, "F16", 16},
    {DType::kBF16, "BF16", 16},         {DType::kI32, "I32", 32},
    {DType::kU32, "U32", 32},           {DType::kF32, "F32", 32},
    {DType::kC64, "C64", 64},           {DType::kF64, "F64", 64},
    {DType::kI64, "I64", 64},           {DType::kU64, "U64", 64},
};
}  // namespace

int dtype_bits(DType t) { return kInfos[static_cast<int>(t)].bits; }
const char* dtype_name(DType t) { return kInfos[static_cast<int>(t)].name; }

bool parse_dtype(std::string_view s, DType* out) {
  for (const auto& info : kInfos) {
    if (s == info.name) {
      *out = info.type;
      return true;
    }
  }
  return false;
}

float fp16_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do {
        e++;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_fp16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint32_t sign = (bits >> 16) & 0x8000u;
  uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf (>= 65520)
  if (abs < 0x38800000u) {  // below smallest normal (2^-14): subnormal or zero
    float af;
    std::memcpy(&af, &abs, 4);
    // Scale so the subnormal unit (2^-24) becomes 1, round to nearest even.
    float scaled = af * 16777216.0f;
    uint32_t m = static_cast<uint32_t>(std::nearbyint(scaled));
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t exp = ((abs >> 23) - 127 + 15);
  uint32_t mant = abs & 0x7fffffu;
  uint32_t h = (exp << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;  // may carry into exponent: correct
  return static_cast<uint16_t>(sign | h);
}

float load_as_float(const void* data, DType t, size_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(data)[i];
    case DType::kBF16: return bf16_to_float(static_cast<const uint16_t*>(data)[i]);
    case DType::kF16: return fp16_to_float(static_cast<const uint16_t*>(data)[i]);
    case DType::kF64: return static_cast<float>(static_cast<const double*>(data)[i]);
    default: return NAN;
  }
}

float round_to_dtype(float f, DType t) {
  switch (t) {
    case DType::kBF16: return bf16_to_float(float_to_bf16(f));
    case DType::kF16: return fp16_to_float(float_to_fp16(f));
    default: return f;
  }
}

}  // namespace nb
