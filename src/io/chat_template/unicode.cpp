#include "io/chat_template/unicode.h"

#include <locale.h>
#include <wctype.h>

namespace nb::jinja {
namespace {

// glibc's built-in C.UTF-8 locale carries the Unicode simple case tables.
locale_t utf8_locale() {
  static locale_t loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(nullptr));
  return loc;
}

char32_t to_upper1(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  locale_t loc = utf8_locale();
  return loc ? static_cast<char32_t>(towupper_l(static_cast<wint_t>(c), loc)) : c;
}

char32_t to_lower1(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  locale_t loc = utf8_locale();
  return loc ? static_cast<char32_t>(towlower_l(static_cast<wint_t>(c), loc)) : c;
}

void append_upper(std::u32string& out, char32_t c) {
  if (c == 0xDF) {  // ß -> SS (Python uses the full SpecialCasing mapping)
    out += U"SS";
    return;
  }
  out += to_upper1(c);
}

// Title case differs from upper case for the Latin digraphs (ǅ, ǈ, ǋ, ǲ) and ß.
void append_title(std::u32string& out, char32_t c) {
  if (c == 0xDF) {
    out += U"Ss";
  } else if (c >= 0x1C4 && c <= 0x1CC) {
    out += static_cast<char32_t>(0x1C5 + 3 * ((c - 0x1C4) / 3));
  } else if (c >= 0x1F1 && c <= 0x1F3) {
    out += char32_t(0x1F2);
  } else {
    out += to_upper1(c);
  }
}

void append_lower(std::u32string& out, const std::u32string& s, size_t i) {
  char32_t c = s[i];
  if (c == 0x130) {  // İ -> i + combining dot above
    out += U"i\u0307";
    return;
  }
  if (c == 0x3A3) {  // Σ -> ς at the end of a word (Final_Sigma), else σ
    bool before = i > 0 && is_cased(s[i - 1]);
    bool after = i + 1 < s.size() && is_cased(s[i + 1]);
    out += (before && !after) ? char32_t(0x3C2) : char32_t(0x3C3);
    return;
  }
  out += to_lower1(c);
}

}  // namespace

void append_utf8(std::string& out, char32_t cp) {
  if (cp >= 0xDC80 && cp <= 0xDCFF) {  // surrogateescape: the original invalid byte
    out += static_cast<char>(cp - 0xDC00);
  } else if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Returns the length of the valid UTF-8 sequence at s[i], or 0 if it is invalid.
static size_t utf8_seq_len(std::string_view s, size_t i, char32_t* cp) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = b(i);
  size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  char32_t v = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b(i + k) & 0x3F);
  }
  static const char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (v < kMin[n] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return n;
}

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    size_t n = utf8_seq_len(s, i, &cp);
    if (n == 0) {
      out += static_cast<char32_t>(0xDC00 + static_cast<unsigned char>(s[i]));
      ++i;
    } else {
      out += cp;
      i += n;
    }
  }
  return out;
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

size_t utf8_length(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    size_t k = utf8_seq_len(s, i, &cp);
    i += k ? k : 1;
    ++n;
  }
  return n;
}

size_t first_invalid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    size_t k = utf8_seq_len(s, i, &cp);
    if (k == 0) return i;
    i += k;
  }
  return std::string_view::npos;
}

bool py_isspace(char32_t c) {
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool py_isprintable(char32_t c) {
  if (c < 0x20 || c == 0x7F) return false;
  if (c < 0x7F) return true;
  if (c <= 0xA0 || c == 0xAD) return false;  // C1 controls, NBSP, soft hyphen
  if (c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F)) return false;
  if ((c >= 0x205F && c <= 0x206F) || c == 0x3000 || c == 0xFEFF) return false;
  if ((c >= 0xD800 && c <= 0xF8FF) || (c >= 0xFFF0 && c <= 0xFFFB) || c >= 0xE0000) return false;
  return true;
}

bool py_islower(std::string_view s) {
  bool any_cased = false;
  for (char32_t c : utf8_decode(s)) {
    if (!is_cased(c)) continue;
    if (to_lower1(c) != c) return false;  // upper or title case
    any_cased = true;
  }
  return any_cased;
}

bool py_isupper(std::string_view s) {
  bool any_cased = false;
  for (char32_t c : utf8_decode(s)) {
    if (!is_cased(c)) continue;
    if (to_upper1(c) != c || c == 0xDF) return false;
    any_cased = true;
  }
  return any_cased;
}

bool is_cased(char32_t c) { return to_upper1(c) != c || to_lower1(c) != c || c == 0xDF; }

std::string py_upper(std::string_view s) {
  std::u32string in = utf8_decode(s), out;
  for (char32_t c : in) append_upper(out, c);
  return utf8_encode(out);
}

std::string py_lower(std::string_view s) {
  std::u32string in = utf8_decode(s), out;
  for (size_t i = 0; i < in.size(); ++i) append_lower(out, in, i);
  return utf8_encode(out);
}

std::string py_capitalize(std::string_view s) {
  std::u32string in = utf8_decode(s), out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (i == 0) append_title(out, in[i]);
    else append_lower(out, in, i);
  }
  return utf8_encode(out);
}

// str.title(): a cased character following an uncased one starts a word.
std::string py_title(std::string_view s) {
  std::u32string in = utf8_decode(s), out;
  bool prev_cased = false;
  for (size_t i = 0; i < in.size(); ++i) {
    bool cased = is_cased(in[i]);
    if (cased && !prev_cased) append_title(out, in[i]);
    else if (cased) append_lower(out, in, i);
    else out += in[i];
    prev_cased = cased;
  }
  return utf8_encode(out);
}

}  // namespace nb::jinja
