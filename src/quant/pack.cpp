#include "quant/pack.h"

#include <cstdlib>
#include <cstring>

namespace nb::quant {

int64_t packed_words(int64_t n, int bits, BitPacking packing) {
  NB_CHECK(bits >= 1 && bits <= 8 && n >= 0, "bits %d, n %lld", bits, static_cast<long long>(n));
  if (packing == BitPacking::kLegacy) {
    const int64_t per_word = 32 / bits;
    return (n + per_word - 1) / per_word;
  }
  return (n * bits + 31) / 32;
}

void pack_codes(const uint8_t* codes, int64_t n, int bits, BitPacking packing, uint32_t* words) {
  const int64_t nw = packed_words(n, bits, packing);
  std::memset(words, 0, static_cast<size_t>(nw) * 4);
  const uint32_t mask = (1u << bits) - 1u;
  if (packing == BitPacking::kLegacy) {
    const int64_t per_word = 32 / bits;
    for (int64_t i = 0; i < n; ++i)
      words[i / per_word] |= (codes[i] & mask) << (bits * (i % per_word));
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    // Element i starts at global bit i*bits; its high bits may spill into the next word.
    const int64_t bit = i * bits;
    const int64_t w = bit / 32;
    const int off = static_cast<int>(bit % 32);
    const uint64_t v = static_cast<uint64_t>(codes[i] & mask) << off;
    words[w] |= static_cast<uint32_t>(v);
    if (off + bits > 32) words[w + 1] |= static_cast<uint32_t>(v >> 32);
  }
}

void unpack_codes(const uint32_t* words, int64_t n, int bits, BitPacking packing, uint8_t* codes) {
  const uint32_t mask = (1u << bits) - 1u;
  if (packing == BitPacking::kLegacy) {
    const int64_t per_word = 32 / bits;
    for (int64_t i = 0; i < n; ++i)
      codes[i] = static_cast<uint8_t>((words[i / per_word] >> (bits * (i % per_word))) & mask);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t bit = i * bits;
    const int64_t w = bit / 32;
    const int off = static_cast<int>(bit % 32);
    uint64_t v = words[w] >> off;
    if (off + bits > 32) v |= static_cast<uint64_t>(words[w + 1]) << (32 - off);
    codes[i] = static_cast<uint8_t>(v & mask);
  }
}

int compare_versions(const std::string& a, const std::string& b) {
  // Reads up to four dotted numeric parts; stops at the first non-digit part.
  auto parts = [](const std::string& s) {
    std::vector<long> p;
    size_t i = 0;
    while (i < s.size() && p.size() < 4) {
      if (s[i] < '0' || s[i] > '9') break;
      char* end = nullptr;
      p.push_back(std::strtol(s.c_str() + i, &end, 10));
      i = static_cast<size_t>(end - s.c_str());
      if (i < s.size() && s[i] == '.') ++i; else break;
    }
    p.resize(4, 0);
    return p;
  };
  std::vector<long> pa = parts(a), pb = parts(b);
  for (size_t i = 0; i < 4; ++i) {
    if (pa[i] != pb[i]) return pa[i] < pb[i] ? -1 : 1;
  }
  return 0;
}

BitPacking ct_packing_for_version(const std::string& version) {
  if (version.empty() || version[0] < '0' || version[0] > '9') return BitPacking::kDense;
  return compare_versions(version, "0.18.0") < 0 ? BitPacking::kLegacy : BitPacking::kDense;
}

std::vector<uint32_t> read_u32(const TensorInfo& t) {
  NB_CHECK(t.dtype == DType::kI32 || t.dtype == DType::kU32, "%s: not a 32-bit integer tensor", t.name.c_str());
  std::vector<uint32_t> v(static_cast<size_t>(t.numel()));
  if (!v.empty()) std::memcpy(v.data(), t.data, v.size() * 4);
  return v;
}

std::vector<int64_t> read_i64(const TensorInfo& t) {
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  if (t.dtype == DType::kI64) {
    if (!v.empty()) std::memcpy(v.data(), t.data, v.size() * 8);
  } else {
    NB_CHECK(t.dtype == DType::kI32, "%s: not an integer tensor", t.name.c_str());
    for (size_t i = 0; i < v.size(); ++i) {
      int32_t x;
      std::memcpy(&x, t.data + 4 * i, 4);
      v[i] = x;
    }
  }
  return v;
}

std::vector<int8_t> read_i8(const TensorInfo& t) {
  NB_CHECK(t.dtype == DType::kI8 || t.dtype == DType::kU8, "%s: not an 8-bit tensor", t.name.c_str());
  std::vector<int8_t> v(static_cast<size_t>(t.numel()));
  if (!v.empty()) std::memcpy(v.data(), t.data, v.size());
  return v;
}

HostTensor copy_tensor(const TensorInfo& t, const Shape& shape) {
  NB_CHECK(shape_numel(shape) == t.numel(), "%s: reshape to %s", t.name.c_str(), shape_to_string(shape).c_str());
  HostTensor h(t.dtype, shape);
  if (h.nbytes()) std::memcpy(h.data(), t.data, h.nbytes());
  return h;
}

}  // namespace nb::quant
