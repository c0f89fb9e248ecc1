// Python-style binding of call arguments to a builtin's parameters: positionals in order, then
// keywords by name; unknown keywords, duplicates and missing required ones are TypeErrors.
#pragma once

#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/chat_template/value.h"

namespace nb::jinja {

class BoundArgs {
 public:
  static Result<BoundArgs> bind(const CallArgs& call, const std::string& what,
                                std::initializer_list<const char*> params, size_t required) {
    BoundArgs b;
    std::vector<const char*> names(params);
    b.values_.resize(names.size());
    if (call.args.size() > names.size())
      return invalid_argument(strformat("%s takes at most %zu argument(s) (%zu given)", what.c_str(), names.size(),
                                        call.args.size()));
    for (size_t i = 0; i < call.args.size(); ++i) b.values_[i] = call.args[i];
    for (const auto& [key, value] : call.kwargs) {
      size_t k = 0;
      while (k < names.size() && key != names[k]) ++k;
      if (k == names.size())
        return invalid_argument(strformat("%s got an unexpected keyword argument '%s'", what.c_str(), key.c_str()));
      if (b.values_[k]) return invalid_argument(strformat("%s got multiple values for argument '%s'", what.c_str(), key.c_str()));
      b.values_[k] = value;
    }
    for (size_t i = 0; i < required; ++i)
      if (!b.values_[i])
        return invalid_argument(strformat("%s missing required argument '%s'", what.c_str(), names[i]));
    return b;
  }

  bool has(size_t i) const { return values_[i].has_value(); }
  // Absent or None: the Python default `None`.
  bool is_none(size_t i) const { return !has(i) || values_[i]->is_none(); }
  const Value& get(size_t i) const { return values_[i] ? *values_[i] : absent_; }
  Value get_or(size_t i, Value fallback) const { return values_[i] ? *values_[i] : std::move(fallback); }

 private:
  std::vector<std::optional<Value>> values_;
  Value absent_;
};

}  // namespace nb::jinja
