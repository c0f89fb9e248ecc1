// Python-`re`-compatible matching for adapter configs, over PCRE2.
//
// PEFT matches module names with Python's `re` (`re.fullmatch` for a string `target_modules`,
// `re.match` for rank/alpha patterns and the layer index). Python and PCRE2 agree on the syntax
// these configs use (classes, groups, alternation, `(?P<n>...)`, lazy quantifiers); `re.match`
// is PCRE2_ANCHORED and `re.fullmatch` adds PCRE2_ENDANCHORED. Names are matched as UTF-8 with
// Unicode classes, like Python `str` patterns.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace nb {

class PyRegex {
 public:
  // `what` names the pattern's origin for errors ("adapter_config.json: rank_pattern key").
  static Result<PyRegex> compile(const std::string& pattern, const std::string& what);

  // Python re.match: anchored at the start, may end anywhere.
  bool match(std::string_view subject) const;
  // Python re.fullmatch: must cover the whole subject.
  bool fullmatch(std::string_view subject) const;
  // re.match, returning capture group `group` (nullopt when no match or the group did not take part).
  std::optional<std::string> match_group(std::string_view subject, int group) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Code;
  std::string pattern_;
  std::shared_ptr<Code> code_;  // shared: compiled code is immutable, copies are cheap
};

}  // namespace nb
