#include "io/chat_template/operators.h"

#include <cmath>
#include <limits>

#include "io/chat_template/builtins.h"

namespace nb::jinja {
namespace {

bool int_like(const Value& v) { return v.kind() == Kind::kInt || v.kind() == Kind::kBool; }

Status type_error(const std::string& op, const Value& a, const Value& b) {
  return invalid_argument(strformat("unsupported operand type(s) for %s: '%s' and '%s'", op.c_str(),
                                    type_name(a).c_str(), type_name(b).c_str()));
}

Status overflow() { return unsupported("integer overflow (Python would switch to a big integer)"); }

Result<Value> add(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (!int_like(a) || !int_like(b)) return Value::number(a.as_float() + b.as_float());
    int64_t r;
    if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) return overflow();
    return Value::integer(r);
  }
  if (a.is_string() || a.is_sequence()) {
    if (a.kind() != b.kind())
      return invalid_argument(strformat("can only concatenate %s (not \"%s\") to %s", type_name(a).c_str(),
                                        type_name(b).c_str(), type_name(a).c_str()));
    if (a.is_string()) return Value::string(a.as_string() + b.as_string());
    ValueList items = a.as_list();
    items.insert(items.end(), b.as_list().begin(), b.as_list().end());
    return a.kind() == Kind::kTuple ? Value::tuple(std::move(items)) : Value::list(std::move(items));
  }
  return type_error("+", a, b);
}

Result<Value> repeat(const Value& seq, int64_t n) {
  if (n < 0) n = 0;
  size_t unit = seq.is_string() ? seq.as_string().size() : seq.as_list().size();
  if (unit != 0 && static_cast<uint64_t>(n) > (1u << 26) / unit) return unsupported("sequence repetition result too large");
  if (seq.is_string()) {
    std::string out;
    for (int64_t i = 0; i < n; ++i) out += seq.as_string();
    return Value::string(std::move(out));
  }
  ValueList items;
  for (int64_t i = 0; i < n; ++i) items.insert(items.end(), seq.as_list().begin(), seq.as_list().end());
  return seq.kind() == Kind::kTuple ? Value::tuple(std::move(items)) : Value::list(std::move(items));
}

Result<Value> multiply(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (!int_like(a) || !int_like(b)) return Value::number(a.as_float() * b.as_float());
    int64_t r;
    if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) return overflow();
    return Value::integer(r);
  }
  const Value* seq = (a.is_string() || a.is_sequence()) ? &a : (b.is_string() || b.is_sequence()) ? &b : nullptr;
  const Value* count = seq == &a ? &b : &a;
  if (seq && int_like(*count)) return repeat(*seq, count->as_int());
  if (seq && count->is_number())
    return invalid_argument(strformat("can't multiply sequence by non-int of type '%s'", type_name(*count).c_str()));
  return type_error("*", a, b);
}

// Python's float // and % (the sign of the remainder follows the divisor).
void float_divmod(double x, double y, double* floordiv, double* mod) {
  double m = std::fmod(x, y);
  double div = (x - m) / y;
  if (m != 0) {
    if ((y < 0) != (m < 0)) {
      m += y;
      div -= 1.0;
    }
  } else {
    m = std::copysign(0.0, y);
  }
  double fd;
  if (div != 0) {
    fd = std::floor(div);
    if (div - fd > 0.5) fd += 1.0;
  } else {
    fd = std::copysign(0.0, x / y);
  }
  *floordiv = fd;
  *mod = m;
}

Result<Value> divide(const std::string& op, const Value& a, const Value& b) {
  if (!a.is_number() || !b.is_number()) {
    if (op == "%" && a.is_string()) return unsupported("printf-style string formatting ('%' on a string) is not supported");
    return type_error(op, a, b);
  }
  if (op == "/") {
    if (b.as_float() == 0) return invalid_argument("division by zero");
    return Value::number(a.as_float() / b.as_float());
  }
  if (int_like(a) && int_like(b)) {
    int64_t x = a.as_int(), y = b.as_int();
    if (y == 0) return invalid_argument("integer division or modulo by zero");
    if (x == std::numeric_limits<int64_t>::min() && y == -1) return overflow();
    int64_t q = x / y, r = x % y;
    if (r != 0 && ((r < 0) != (y < 0))) {
      q -= 1;
      r += y;
    }
    return Value::integer(op == "//" ? q : r);
  }
  if (b.as_float() == 0) return invalid_argument(op == "//" ? "float floor division by zero" : "float modulo");
  double fd, m;
  float_divmod(a.as_float(), b.as_float(), &fd, &m);
  return Value::number(op == "//" ? fd : m);
}

Result<Value> power(const Value& a, const Value& b) {
  if (!a.is_number() || !b.is_number()) return type_error("** or pow()", a, b);
  if (int_like(a) && int_like(b) && b.as_int() >= 0) {
    int64_t base = a.as_int(), e = b.as_int(), r = 1;
    while (e > 0) {
      if ((e & 1) && __builtin_mul_overflow(r, base, &r)) return overflow();
      e >>= 1;
      if (e > 0 && __builtin_mul_overflow(base, base, &base)) return overflow();
    }
    return Value::integer(r);
  }
  double x = a.as_float(), y = b.as_float();
  if (x == 0 && y < 0) return invalid_argument("0.0 cannot be raised to a negative power");
  if (x < 0 && y != std::floor(y)) return unsupported("complex results of ** are not supported");
  double r = std::pow(x, y);
  if (std::isinf(r) && std::isfinite(x) && std::isfinite(y)) return invalid_argument("(34, 'Numerical result out of range')");
  return Value::number(r);
}

}  // namespace

Result<Value> binary_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") return Value::string(py_str(a) + py_str(b));
  if (a.is_undefined()) return undefined_error(a);
  if (b.is_undefined()) return undefined_error(b);
  if (op == "+") return add(a, b);
  if (op == "-") {
    if (!a.is_number() || !b.is_number()) return type_error("-", a, b);
    if (!int_like(a) || !int_like(b)) return Value::number(a.as_float() - b.as_float());
    int64_t r;
    if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) return overflow();
    return Value::integer(r);
  }
  if (op == "*") return multiply(a, b);
  if (op == "/" || op == "//" || op == "%") return divide(op, a, b);
  if (op == "**") return power(a, b);
  return internal_error("unknown operator " + op);
}

Result<Value> negate(const Value& v, bool minus) {
  if (v.is_undefined()) return undefined_error(v);
  if (v.is_float()) return Value::number(minus ? -v.as_float() : v.as_float());
  if (int_like(v)) {
    if (minus && v.as_int() == std::numeric_limits<int64_t>::min()) return overflow();
    return Value::integer(minus ? -v.as_int() : v.as_int());
  }
  return invalid_argument(strformat("bad operand type for unary %c: '%s'", minus ? '-' : '+', type_name(v).c_str()));
}

Result<bool> compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return py_equal(a, b);
  if (op == "!=") return !py_equal(a, b);
  if (op == "in" || op == "notin") {
    NB_ASSIGN_OR_RETURN(bool in, py_contains(b, a));
    return op == "in" ? in : !in;
  }
  if (a.is_undefined()) return undefined_error(a);
  if (b.is_undefined()) return undefined_error(b);
  NB_ASSIGN_OR_RETURN(int c, py_compare(a, b, op.c_str()));
  if (c == 2) return false;
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;
}

}  // namespace nb::jinja
