#include "io/py_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace nb {

struct PyRegex::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

namespace {

// Runs one match with the given extra options; returns the match-data (null when no match).
struct MatchData {
  pcre2_match_data* md = nullptr;
  ~MatchData() { pcre2_match_data_free(md); }
};

int run_match(pcre2_code* code, std::string_view subject, uint32_t options, MatchData* out) {
  out->md = pcre2_match_data_create_from_pattern(code, nullptr);
  NB_CHECK(out->md != nullptr, "pcre2_match_data_create_from_pattern failed");
  return pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), 0, options, out->md,
                     nullptr);
}

}  // namespace

Result<PyRegex> PyRegex::compile(const std::string& pattern, const std::string& what) {
  int err = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &offset, nullptr);
  if (!code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    return format_error(strformat("%s: invalid regular expression '%s' at offset %zu: %s", what.c_str(),
                                  pattern.c_str(), static_cast<size_t>(offset), reinterpret_cast<char*>(buf)));
  }
  PyRegex re;
  re.pattern_ = pattern;
  re.code_ = std::make_shared<Code>();
  re.code_->code = code;
  return re;
}

bool PyRegex::match(std::string_view subject) const {
  MatchData md;
  return run_match(code_->code, subject, PCRE2_ANCHORED, &md) > 0;
}

bool PyRegex::fullmatch(std::string_view subject) const {
  MatchData md;
  return run_match(code_->code, subject, PCRE2_ANCHORED | PCRE2_ENDANCHORED, &md) > 0;
}

std::optional<std::string> PyRegex::match_group(std::string_view subject, int group) const {
  MatchData md;
  int rc = run_match(code_->code, subject, PCRE2_ANCHORED, &md);
  if (rc <= 0 || group >= rc) return std::nullopt;
  PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.md);
  PCRE2_SIZE begin = ov[2 * group], end = ov[2 * group + 1];
  if (begin == PCRE2_UNSET) return std::nullopt;
  return std::string(subject.substr(begin, end - begin));
}

}  // namespace nb
