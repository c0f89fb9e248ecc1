// Python's binary and unary operators on template values (int overflow is an error, not a big
// integer). Errors carry Python's message; the renderer adds the position.
#pragma once

#include <string>

#include "io/chat_template/value.h"

namespace nb::jinja {

// op: + - * / // % ** ~
Result<Value> binary_op(const std::string& op, const Value& a, const Value& b);
Result<Value> negate(const Value& v, bool minus);
// op: == != < <= > >= in notin
Result<bool> compare_op(const std::string& op, const Value& a, const Value& b);

}  // namespace nb::jinja
