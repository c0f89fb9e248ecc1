// UTF-8 helpers giving Python `str` semantics to templates: lengths, indices and slices count
// code points, and whitespace / case follow Python's Unicode rules (str.isspace, str.upper).
#pragma once

#include <string>
#include <string_view>

namespace nb::jinja {

// Decodes UTF-8 to code points. Invalid bytes become U+DC80..U+DCFF (Python's surrogateescape),
// so utf8_encode(utf8_decode(s)) == s for any byte string.
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
void append_utf8(std::string& out, char32_t cp);
size_t utf8_length(std::string_view s);
// Byte offset of the first invalid UTF-8 sequence, or npos.
size_t first_invalid_utf8(std::string_view s);

// Python's str.isspace() (also what `\s` matches in Python's `re` for str patterns).
bool py_isspace(char32_t c);
// Python's str.isprintable() for one code point (approximate outside the Latin, general
// punctuation and BMP special ranges; only used by repr()).
bool py_isprintable(char32_t c);

// Python's str.upper() / str.lower() / str.capitalize() / str.title(), full mappings for the
// common special cases (ß -> SS, İ -> i̇, final sigma), simple Unicode mappings otherwise.
std::string py_upper(std::string_view s);
std::string py_lower(std::string_view s);
std::string py_capitalize(std::string_view s);
std::string py_title(std::string_view s);
bool is_cased(char32_t c);
bool py_islower(std::string_view s);  // str.islower(): has a cased character, none upper / title
bool py_isupper(std::string_view s);

}  // namespace nb::jinja
