#include "quant/match.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace nb::quant {

struct ModuleSelector::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

Result<ModuleSelector> ModuleSelector::compile(const std::string& selector, const std::string& what) {
  ModuleSelector s;
  s.text_ = selector;
  if (selector.rfind("re:", 0) != 0) return s;
  const std::string pattern = selector.substr(3);
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
  s.regex_ = std::make_shared<Code>();
  s.regex_->code = code;
  return s;
}

bool ModuleSelector::matches(std::string_view name, const std::vector<std::string>& class_names) const {
  if (regex_) {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(regex_->code, nullptr);
    NB_CHECK(md != nullptr, "pcre2_match_data_create_from_pattern failed");
    int rc = pcre2_match(regex_->code, reinterpret_cast<PCRE2_SPTR>(name.data()), name.size(), 0, PCRE2_ANCHORED, md,
                         nullptr);
    pcre2_match_data_free(md);
    return rc > 0;
  }
  if (name == text_) return true;
  for (const auto& c : class_names)
    if (c == text_) return true;
  return false;
}

}  // namespace nb::quant
