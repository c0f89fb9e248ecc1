// PCRE2 regular expressions that behave like the Oniguruma ones Hugging Face `tokenizers` uses
// for Split / Replace patterns.
//
// Two differences are closed when a pattern is compiled (oniguruma_to_pcre2):
//   - \s is Unicode White_Space in Oniguruma; PCRE2 also matches U+180E. \s and \S are rewritten
//     to the explicit White_Space set (\S inside a character class is left to PCRE2).
//   - PCRE2 10.42 knows Unicode 14, Oniguruma in tokenizers 0.23 Unicode 16. \p{L}, \p{N}, \p{P},
//     \p{S} and \p{M} get the newer code points appended (unicode_extras.inc, generated from the
//     reference library by tools/tokref/gen_unicode_extras.py).
//   - \h / \H are hexadecimal digits in Oniguruma's Ruby syntax (horizontal space in PCRE2).
// The test compares every code point of every class with the reference's output.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace nb::tok {

// Escapes a literal so that it matches itself (HF compiles String patterns as escaped regexes).
std::string regex_escape(std::string_view literal);

// Rewrites an Oniguruma pattern into an equivalent PCRE2 pattern (see above).
std::string oniguruma_to_pcre2(std::string_view pattern);

class Regex {
 public:
  // Compiles with PCRE2_UTF | PCRE2_UCP and JIT. `source` names the pattern in error messages.
  static Result<Regex> compile(std::string_view oniguruma_pattern, const std::string& source);
  // A literal (tokenizer.json {"String": ...} patterns): plain substring search, same matches
  // as the escaped regex.
  static Result<Regex> literal(std::string_view text, const std::string& source);

  // Non-overlapping matches [start, end) from left to right, with the empty-match rule of
  // Oniguruma's and Rust's find_iter. `text` must be valid UTF-8 (it is not checked again).
  Status find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>* out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Code;
  std::shared_ptr<const Code> code_;
  std::string pattern_;  // as given (Oniguruma syntax)
  std::string literal_;
  bool is_literal_ = false;
};

}  // namespace nb::tok
