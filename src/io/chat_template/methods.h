// Python methods of str, dict and list that templates call (`content.split('</think>')`,
// `message.get('x')`), with Python's results (indices in code points, Python whitespace).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/chat_template/value.h"

namespace nb::jinja {

// The bound method `obj.name` as a callable value; nullopt when obj's Python type has no such
// attribute. Mutating list / dict methods come back as an Undefined that fails when used, like
// jinja2's ImmutableSandboxedEnvironment.
std::optional<Value> find_method(const Value& obj, const std::string& name);

// Python str helpers shared with the filters.
std::string py_strip(std::string_view s, const Value& chars, bool left, bool right);
std::string py_replace(const std::string& s, const std::string& old, const std::string& with, int64_t count);
std::vector<std::string> py_splitlines(const std::string& s, bool keepends);

}  // namespace nb::jinja
