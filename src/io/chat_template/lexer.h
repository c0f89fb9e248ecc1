// Tokenizer for the Jinja subset, reproducing jinja2's lexer with transformers' settings:
// trim_blocks (drop the first newline after a block or comment tag), lstrip_blocks (drop spaces
// and tabs before a block or comment tag that starts a line), `-` / `+` whitespace control,
// newline normalization and the dropped final newline (keep_trailing_newline=False).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace nb::jinja {

// Maps byte offsets of the normalized source to "chat template 'name' line L, column C".
struct SourceInfo {
  std::string name;
  std::string text;  // normalized: "\r\n" and "\r" became "\n", the final newline dropped
  std::string where(uint32_t pos) const;        // "chat template 'name' line L, column C"
  std::string line_column(uint32_t pos) const;  // "line L, column C"
  Status parse_error(uint32_t pos, const std::string& message) const;   // format_error
  Status render_error(uint32_t pos, const std::string& message) const;  // invalid_argument
};

enum class Tok : uint8_t {
  kData,        // literal text (value)
  kVarBegin,    // {{
  kVarEnd,      // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,      // value holds the unescaped text
  kInt,
  kFloat,
  kOp,          // value holds the operator: "+", "//", "(", "==", ...
  kEof,
};

struct Token {
  Tok type = Tok::kEof;
  uint32_t pos = 0;
  std::string value;
  int64_t int_value = 0;
  double float_value = 0;
};

// jinja2's newline handling: "\r\n", "\r" -> "\n", and one trailing newline removed.
std::string normalize_template_source(const std::string& source);

// Tokenizes src.text. Comments vanish; {% raw %} bodies become data.
Result<std::vector<Token>> tokenize(const SourceInfo& src);

}  // namespace nb::jinja
