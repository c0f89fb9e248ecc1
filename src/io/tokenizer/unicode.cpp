#include "io/tokenizer/unicode.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>

namespace nb::tok {
namespace {

// Valid range of the second byte of a sequence, by lead byte (Unicode Table 3-7). Returns false
// for bytes that cannot start a sequence.
bool second_byte_range(uint8_t lead, uint8_t* lo, uint8_t* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) return true;
  if (lead == 0xE0) { *lo = 0xA0; return true; }
  if (lead >= 0xE1 && lead <= 0xEC) return true;
  if (lead == 0xED) { *hi = 0x9F; return true; }
  if (lead >= 0xEE && lead <= 0xEF) return true;
  if (lead == 0xF0) { *lo = 0x90; return true; }
  if (lead >= 0xF1 && lead <= 0xF3) return true;
  if (lead == 0xF4) { *hi = 0x8F; return true; }
  return false;
}

// Length of the valid prefix of the multi-byte sequence at s[i] (1..need). Sets *complete when
// the whole sequence is present and valid. A result of 0 means s[i] is not a valid lead byte.
size_t valid_prefix(std::string_view s, size_t i, bool* complete) {
  const uint8_t lead = static_cast<uint8_t>(s[i]);
  *complete = false;
  uint8_t lo, hi;
  if (!second_byte_range(lead, &lo, &hi)) return 0;
  const size_t need = utf8_seq_len(lead);
  size_t n = 1;
  while (n < need && i + n < s.size()) {
    uint8_t b = static_cast<uint8_t>(s[i + n]);
    bool ok = n == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return n;
    ++n;
  }
  *complete = n == need;
  return n;
}

}  // namespace

size_t utf8_invalid_offset(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (static_cast<uint8_t>(s[i]) < 0x80) { ++i; continue; }
    bool complete = false;
    size_t len = valid_prefix(s, i, &complete);
    if (!complete) return i;
    i += len;
  }
  return kValidUtf8;
}

char32_t utf8_next(std::string_view s, size_t& i) {
  const uint8_t b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) { ++i; return b0; }
  const size_t len = utf8_seq_len(b0);
  char32_t cp = b0 & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < len && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

std::string utf8_lossy(std::string_view s) {
  if (utf8_invalid_offset(s) == kValidUtf8) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<uint8_t>(s[i]) < 0x80) { out += s[i++]; continue; }
    bool complete = false;
    size_t len = valid_prefix(s, i, &complete);
    if (complete) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the maximal invalid subpart
      i += len == 0 ? 1 : len;
    }
  }
  return out;
}

size_t utf8_incomplete_tail(std::string_view s) {
  // A sequence is at most 4 bytes: look for its lead among the last 3 bytes.
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const uint8_t b = static_cast<uint8_t>(s[n - back]);
    if (b >= 0x80 && b < 0xC0) continue;  // continuation byte: the lead is further back
    if (b < 0x80) return 0;
    bool complete = false;
    size_t len = valid_prefix(s, n - back, &complete);
    return (!complete && len == back) ? back : 0;
  }
  return 0;
}

bool is_white_space(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
  if (c < 0x85) return false;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

namespace {

// HF tokenizers normalizes with the tables of the `unicode-normalization-alignments` crate,
// which are Unicode 9.0. A character assigned later is, for it, a starter that never decomposes,
// reorders or composes. Such characters split the text into runs that ICU normalizes separately,
// which reproduces the Unicode 9.0 result (normalization data of assigned characters is stable).
bool newer_than_unicode_9(char32_t c) {
  if (c < 0x0560) return false;  // U+0560 (Unicode 11.0) is the lowest code point assigned after 9.0
  UVersionInfo v;
  u_charAge(static_cast<UChar32>(c), v);
  return v[0] > 9;
}

Status normalize_run(const icu::Normalizer2* n, std::string_view run, std::string* out) {
  if (run.empty()) return Status::ok();
  UErrorCode status = U_ZERO_ERROR;
  icu::StringByteSink<std::string> sink(out);
  n->normalizeUTF8(0, icu::StringPiece(run.data(), static_cast<int32_t>(run.size())), sink, nullptr, status);
  if (U_FAILURE(status)) return internal_error(strformat("ICU normalization failed: %s", u_errorName(status)));
  return Status::ok();
}

}  // namespace

Result<std::string> unicode_normalize(std::string_view text, NormalForm form) {
  bool ascii = true;
  for (char ch : text) {
    if (static_cast<uint8_t>(ch) >= 0x80) { ascii = false; break; }
  }
  if (ascii) return std::string(text);  // ASCII is invariant under all four forms
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case NormalForm::kNFC: n = icu::Normalizer2::getNFCInstance(status); break;
    case NormalForm::kNFD: n = icu::Normalizer2::getNFDInstance(status); break;
    case NormalForm::kNFKC: n = icu::Normalizer2::getNFKCInstance(status); break;
    case NormalForm::kNFKD: n = icu::Normalizer2::getNFKDInstance(status); break;
  }
  if (U_FAILURE(status) || n == nullptr) return internal_error(strformat("ICU normalizer unavailable: %s", u_errorName(status)));
  std::string out;
  out.reserve(text.size() + 16);
  size_t run_start = 0;
  for (size_t i = 0; i < text.size();) {
    const size_t at = i;
    if (!newer_than_unicode_9(utf8_next(text, i))) continue;
    NB_RETURN_IF_ERROR(normalize_run(n, text.substr(run_start, at - run_start), &out));
    out.append(text.substr(at, i - at));
    run_start = i;
  }
  NB_RETURN_IF_ERROR(normalize_run(n, text.substr(run_start), &out));
  return out;
}

namespace {
struct ByteMaps {
  std::array<char32_t, 256> fwd{};
  std::array<int16_t, 256 + 68> inv{};  // code point -> byte, -1 outside the alphabet
  ByteMaps() {
    inv.fill(-1);
    // Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100.. in order.
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      fwd[b] = printable ? static_cast<char32_t>(b) : next++;
      inv[fwd[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteMaps& byte_maps() {
  static const ByteMaps maps;
  return maps;
}
}  // namespace

const std::array<char32_t, 256>& byte_to_unicode() { return byte_maps().fwd; }

int unicode_to_byte(char32_t c) {
  return c < byte_maps().inv.size() ? byte_maps().inv[c] : -1;
}

}  // namespace nb::tok
