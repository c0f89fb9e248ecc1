// Helpers for the quant tests: temporary directories, small checkpoints written through the
// safetensors writer, seeded random data, and the spec's packers re-stated independently of
// src/quant (straight from formats.md §2.5, §2.6, §3.3, §3.4, §4.3 — they never call the code
// under test).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/mmap.h"
#include "io/safetensors.h"

namespace nb::quant::testing {

// A fresh directory under /tmp, removed with everything in it at the end of the scope.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "nibble-quant-XXXXXX").string();
    NB_CHECK(::mkdtemp(tmpl.data()) != nullptr, "mkdtemp");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Seeded generator: NIBBLE_TEST_SEED reproduces a run; otherwise a fresh seed, printed on failure.
inline uint64_t test_seed() {
  if (const char* s = std::getenv("NIBBLE_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}
#define NB_SEEDED_RNG(rng)                       \
  const uint64_t rng##_seed = ::nb::quant::testing::test_seed(); \
  SCOPED_TRACE(::testing::Message() << "NIBBLE_TEST_SEED=" << rng##_seed); \
  std::mt19937_64 rng(rng##_seed)

inline int rand_int(std::mt19937_64& rng, int lo, int hi) {  // inclusive
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}
inline float rand_float(std::mt19937_64& rng, float lo, float hi) {
  return std::uniform_real_distribution<float>(lo, hi)(rng);
}

// Raw tensor bytes for a checkpoint.
struct RawTensor {
  std::string name;
  DType dtype;
  Shape shape;
  std::vector<uint8_t> data;
};

template <typename T>
RawTensor raw(const std::string& name, DType dtype, Shape shape, const std::vector<T>& values) {
  RawTensor t{name, dtype, std::move(shape), std::vector<uint8_t>(values.size() * sizeof(T))};
  if (!values.empty()) std::memcpy(t.data.data(), values.data(), t.data.size());
  return t;
}

// Float values stored as `dtype` (BF16/F16/F32).
inline RawTensor raw_float(const std::string& name, DType dtype, Shape shape, const std::vector<float>& v) {
  if (dtype == DType::kF32) return raw(name, dtype, std::move(shape), v);
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = dtype == DType::kBF16 ? float_to_bf16(v[i]) : float_to_fp16(v[i]);
  return raw(name, dtype, std::move(shape), h);
}

// Writes model.safetensors (or shards when max_shard_bytes > 0) and config.json into `dir`.
inline void write_checkpoint(const std::string& dir, const std::vector<RawTensor>& tensors,
                             const std::string& config_json, uint64_t max_shard_bytes = 0) {
  std::filesystem::create_directories(dir);
  SafetensorsWriter w(max_shard_bytes ? dir : dir + "/model.safetensors", max_shard_bytes);
  for (const auto& t : tensors) ASSERT_TRUE(w.add(t.name, t.dtype, t.shape, t.data.data()).is_ok()) << t.name;
  ASSERT_TRUE(w.finish().is_ok());
  ASSERT_TRUE(write_text_file(dir + "/config.json", config_json).is_ok());
}

// ---- independent packers (formats.md) ---------------------------------------------------------

// §2.5: row of signed codes → int32 words, element i of word j at bits [b*i, b*i+b-1], +2^(b-1),
// padding code 0. Only b = 4, 8.
inline std::vector<uint32_t> spec_ct_pack_row(const std::vector<int>& q, int bits) {
  const size_t pf = 32 / bits;
  std::vector<uint32_t> w((q.size() + pf - 1) / pf, 0);
  for (size_t i = 0; i < q.size(); ++i)
    w[i / pf] |= static_cast<uint32_t>(q[i] + (1 << (bits - 1))) << (bits * (i % pf));
  return w;
}

// §2.6: zero points z[out][G] packed along out → [ceil(out/pf), G].
inline std::vector<uint32_t> spec_ct_pack_zp(const std::vector<int>& z, int64_t out, int64_t G, int bits) {
  const int64_t pf = 32 / bits, rows = (out + pf - 1) / pf;
  std::vector<uint32_t> w(static_cast<size_t>(rows * G), 0);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t g = 0; g < G; ++g)
      w[(o / pf) * G + g] |= static_cast<uint32_t>(z[o * G + g] + (1 << (bits - 1))) << (bits * (o % pf));
  return w;
}

// §3.3: GPTQ unsigned codes u[k][n] (in x out) → qweight [in/pf, out].
inline std::vector<uint32_t> spec_gptq_pack_qweight(const std::vector<int>& u, int64_t in, int64_t out, int bits) {
  const int64_t pf = 32 / bits;
  std::vector<uint32_t> w(static_cast<size_t>(in / pf * out), 0);
  for (int64_t k = 0; k < in; ++k)
    for (int64_t n = 0; n < out; ++n) w[(k / pf) * out + n] |= static_cast<uint32_t>(u[k * out + n]) << (bits * (k % pf));
  return w;
}

// §3.3/§3.4: zero points z[g][n] (unsigned, the real zero) → qzeros [G, out/pf]; v1 stores z - 1.
inline std::vector<uint32_t> spec_gptq_pack_qzeros(const std::vector<int>& z, int64_t G, int64_t out, int bits, bool v2) {
  const int64_t pf = 32 / bits;
  const uint32_t mask = (1u << bits) - 1;
  std::vector<uint32_t> w(static_cast<size_t>(G * out / pf), 0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t n = 0; n < out; ++n) {
      uint32_t stored = static_cast<uint32_t>(v2 ? z[g * out + n] : z[g * out + n] - 1) & mask;
      w[g * (out / pf) + n / pf] |= stored << (bits * (n % pf));
    }
  return w;
}

// §4.3: AWQ rows u[k][n] (rows x out) → [rows, out/8], nibble i holds column 8c + ORDER[i].
inline std::vector<uint32_t> spec_awq_pack(const std::vector<int>& u, int64_t rows, int64_t out) {
  static const int kOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  std::vector<uint32_t> w(static_cast<size_t>(rows * out / 8), 0);
  for (int64_t k = 0; k < rows; ++k)
    for (int64_t c = 0; c < out / 8; ++c)
      for (int i = 0; i < 8; ++i) w[k * (out / 8) + c] |= static_cast<uint32_t>(u[k * out + 8 * c + kOrder[i]]) << (4 * i);
  return w;
}

}  // namespace nb::quant::testing
