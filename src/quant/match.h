// compressed-tensors module selectors (formats.md §2.2), over io/py_regex.h:
//   "re:<pattern>"  Python re.match: anchored at the start only ("re:.*mlp.gate$" needs its own $)
//   anything else   equality with the module's full name, or with its class name or a base-class name
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "io/py_regex.h"

namespace nb::quant {

class ModuleSelector {
 public:
  // `what` names where the selector came from for errors ("config.json: quantization_config.ignore").
  static Result<ModuleSelector> compile(const std::string& selector, const std::string& what);

  // name: fully qualified module name; class_names: the module's class and its base classes
  // (e.g. {"Linear"}).
  bool matches(std::string_view name, const std::vector<std::string>& class_names) const;
  const std::string& text() const { return text_; }

 private:
  std::string text_;
  std::optional<PyRegex> regex_;  // empty for an exact-name selector
};

}  // namespace nb::quant
