// UTF-8 and Unicode helpers for the tokenizers: strict validation, Rust-compatible lossy
// decoding (what Hugging Face `tokenizers` does to decoded bytes), Unicode normalization (ICU),
// the White_Space property and the GPT-2 byte-to-unicode map.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace nb::tok {

constexpr size_t kValidUtf8 = static_cast<size_t>(-1);

// Byte offset of the first invalid UTF-8 sequence (overlong forms, surrogates, > U+10FFFF and
// truncated sequences are invalid), or kValidUtf8.
size_t utf8_invalid_offset(std::string_view s);

// Length of the UTF-8 sequence starting with `lead` (1 for ASCII and for invalid lead bytes).
inline size_t utf8_seq_len(uint8_t lead) {
  if (lead < 0xC0) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// Decodes the code point at s[i] of a string already known to be valid UTF-8; advances i.
char32_t utf8_next(std::string_view s, size_t& i);
void append_utf8(std::string& out, char32_t cp);

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Number of bytes at the end of `bytes` that form a valid but unfinished UTF-8 sequence (a
// prefix that more bytes could complete), 0 when the text ends on a boundary or on an invalid
// sequence that no later byte can repair.
size_t utf8_incomplete_tail(std::string_view bytes);

// Unicode White_Space (what Rust's char::is_whitespace and Oniguruma's \s match).
bool is_white_space(char32_t c);

enum class NormalForm { kNFC, kNFD, kNFKC, kNFKD };
// Normalizes valid UTF-8 text as HF tokenizers does: with Unicode 9.0 data (characters assigned
// later are left alone and block reordering/composition across them), computed with ICU.
// ASCII text is returned unchanged without calling ICU.
Result<std::string> unicode_normalize(std::string_view text, NormalForm form);

// GPT-2 byte-level alphabet: byte b is written as code point byte_to_unicode()[b].
const std::array<char32_t, 256>& byte_to_unicode();
// Inverse of byte_to_unicode: the byte of code point c, or -1 when c is not in the alphabet.
int unicode_to_byte(char32_t c);

}  // namespace nb::tok
