// Dequantization of one 32-column chunk of a packed row into four 8-float vectors in column order
// (layouts in packed.h / README.md). A kernel K provides
//   K::Table K::table(float scale, float zero)   per (row, group)
//   void K::chunk(const uint8_t* codes, const K::Table&, __m256 f[4])
//   K::kChunkBytes                               bytes of codes per chunk
// and every value equals ops::dequant_weight exactly (same single rounding to the scale dtype).
#pragma once

#include <type_traits>

#include "backends/cpu/simd.h"

namespace nb::cpu {

// INT4, 16 bytes per chunk. The table holds two byte planes of the 16 dequantized 16-bit values
// (low bytes, high bytes), each duplicated in both 128-bit lanes for vpshufb. The 128-bit chunk is
// broadcast; lane 0 takes the low nibbles, lane 1 the high nibbles (variable shift); two lookups
// give the low and high bytes of 32 values, which vpunpck{l,h}bw interleave into 16-bit words.
struct Int4Table {
  __m256i lo, hi;
};

// The 16 dequantized values of table index u = q + 8: (u - 8 - z) * s, as float vectors u = 0..7, 8..15.
inline void int4_values(float s, float z, __m256* v0, __m256* v1) {
  const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
  *v0 = _mm256_mul_ps(_mm256_sub_ps(_mm256_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1), zv), sv);
  *v1 = _mm256_mul_ps(_mm256_sub_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), zv), sv);
}

// 16 half-words (u = 0..7 in h0, 8..15 in h1) -> the two byte planes, broadcast to both lanes.
inline Int4Table int4_planes(__m128i h0, __m128i h1) {
  const __m128i split = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  h0 = _mm_shuffle_epi8(h0, split);  // [low bytes u0-7, high bytes u0-7]
  h1 = _mm_shuffle_epi8(h1, split);
  return {_mm256_broadcastsi128_si256(_mm_unpacklo_epi64(h0, h1)), _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(h0, h1))};
}

// The 16-bit values of the chunk's 32 nibbles as words: lo holds byte positions 0-7 of each lane,
// hi positions 8-15 (lane 0: low nibbles, lane 1: high nibbles of the 16 code bytes).
inline void int4_words(const uint8_t* codes, const Int4Table& t, __m256i* lo, __m256i* hi) {
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  const __m256i n = _mm256_and_si256(_mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(15));
  const __m256i low_bytes = _mm256_shuffle_epi8(t.lo, n), high_bytes = _mm256_shuffle_epi8(t.hi, n);
  *lo = _mm256_unpacklo_epi8(low_bytes, high_bytes);
  *hi = _mm256_unpackhi_epi8(low_bytes, high_bytes);
}

struct Int4Bf16Kernel {
  using Table = Int4Table;
  static constexpr int kChunkBytes = 16;
  static Table table(float s, float z) {
    __m256 v0, v1;
    int4_values(s, z, &v0, &v1);
    // bf16 bits in the upper halves -> 16 words [u0..15] -> two xmm of 8 words.
    const __m256i b0 = _mm256_srli_epi32(_mm256_castps_si256(simd::round_bf16(v0)), 16);
    const __m256i b1 = _mm256_srli_epi32(_mm256_castps_si256(simd::round_bf16(v1)), 16);
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(b0, b1), 0xD8);  // [u0-7 | u8-15]
    return int4_planes(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
  }
  static void chunk(const uint8_t* codes, const Table& t, __m256 f[4]) {
    __m256i a, b;
    int4_words(codes, t, &a, &b);
    const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    f[0] = _mm256_castsi256_ps(_mm256_slli_epi32(a, 16));  // even words: byte positions 0, 2, 4, 6
    f[1] = _mm256_castsi256_ps(_mm256_and_si256(a, high));  // odd words: 1, 3, 5, 7
    f[2] = _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));  // 8, 10, 12, 14
    f[3] = _mm256_castsi256_ps(_mm256_and_si256(b, high));  // 9, 11, 13, 15
  }
};

struct Int4F16Kernel {
  using Table = Int4Table;
  static constexpr int kChunkBytes = 16;
  static Table table(float s, float z) {
    __m256 v0, v1;
    int4_values(s, z, &v0, &v1);
    return int4_planes(_mm256_cvtps_ph(v0, _MM_FROUND_TO_NEAREST_INT), _mm256_cvtps_ph(v1, _MM_FROUND_TO_NEAREST_INT));
  }
  static void chunk(const uint8_t* codes, const Table& t, __m256 f[4]) {
    __m256i a, b;
    int4_words(codes, t, &a, &b);
    f[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(a));
    f[1] = _mm256_cvtph_ps(_mm256_extracti128_si256(a, 1));
    f[2] = _mm256_cvtph_ps(_mm256_castsi256_si128(b));
    f[3] = _mm256_cvtph_ps(_mm256_extracti128_si256(b, 1));
  }
};

// INT8 codes in column order: (q - z) exactly as int, times s, rounded to the scale dtype.
template <DType S>
struct Int8Kernel {
  struct Table {
    __m256 s;
    __m256i z;
  };
  static constexpr int kChunkBytes = 32;
  static Table table(float s, float z) { return {_mm256_set1_ps(s), _mm256_set1_epi32(static_cast<int>(z))}; }
  static void chunk(const uint8_t* codes, const Table& t, __m256 f[4]) {
    for (int i = 0; i < 4; ++i) {
      const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + 8 * i));
      const __m256i q = _mm256_sub_epi32(_mm256_cvtepi8_epi32(q8), t.z);
      const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(q), t.s);
      if constexpr (S == DType::kBF16) {
        f[i] = simd::round_bf16(v);
      } else if constexpr (S == DType::kF16) {
        f[i] = simd::round_f16(v);
      } else {
        f[i] = v;
      }
    }
  }
};

// The table of (row n, group g): from the weight's precomputed tables when it has them.
template <class K, class W>
inline typename K::Table group_table(const W& w, int64_t n, int64_t g) {
  const size_t gi = static_cast<size_t>(n * w.groups + g);
  if constexpr (std::is_same_v<typename K::Table, Int4Table>) {
    if (w.has_tables()) {
      const uint8_t* t = w.tables.template as<uint8_t>() + static_cast<size_t>(w.table_index[gi]) * 64;
      return {_mm256_load_si256(reinterpret_cast<const __m256i*>(t)), _mm256_load_si256(reinterpret_cast<const __m256i*>(t + 32))};
    }
  }
  return K::table(w.scales[gi], w.zeros[gi]);
}

}  // namespace nb::cpu
