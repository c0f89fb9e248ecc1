#include "quant/match.h"

namespace nb::quant {

Result<ModuleSelector> ModuleSelector::compile(const std::string& selector, const std::string& what) {
  ModuleSelector s;
  s.text_ = selector;
  if (selector.rfind("re:", 0) != 0) return s;
  NB_ASSIGN_OR_RETURN(PyRegex re, PyRegex::compile(selector.substr(3), what));
  s.regex_ = std::move(re);
  return s;
}

bool ModuleSelector::matches(std::string_view name, const std::vector<std::string>& class_names) const {
  if (regex_) return regex_->match(name);  // Python re.match: anchored at the start only
  if (name == text_) return true;
  for (const auto& c : class_names)
    if (c == text_) return true;
  return false;
}

}  // namespace nb::quant
