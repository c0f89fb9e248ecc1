// jinja2's builtin filters and tests (the subset chat templates use), with transformers' tojson.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "io/chat_template/args.h"
#include "io/chat_template/builtins.h"
#include "io/chat_template/methods.h"
#include "io/chat_template/operators.h"
#include "io/chat_template/unicode.h"

namespace nb::jinja {
namespace {

Result<BoundArgs> bind(const CallArgs& a, const char* filter, std::initializer_list<const char*> params,
                       size_t required = 0) {
  return BoundArgs::bind(a, strformat("filter '%s'", filter), params, required);
}

// jinja2's make_attrgetter: "a.b.0" looks up a, then b, then item 0, item-first.
Result<Value> lookup_path(const Value& item, const Value& path) {
  if (!path.is_string()) return get_item(item, path);
  Value v = item;
  std::string p = path.as_string();
  size_t start = 0;
  while (true) {
    size_t dot = p.find('.', start);
    std::string part = p.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    NB_ASSIGN_OR_RETURN(v, get_item(v, digits ? Value::integer(std::atoll(part.c_str())) : Value::string(part)));
    if (dot == std::string::npos) return v;
    start = dot + 1;
  }
}

Result<int64_t> length_of(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined: return 0;
    case Kind::kString: return static_cast<int64_t>(utf8_length(v.as_string()));
    case Kind::kList:
    case Kind::kTuple: return static_cast<int64_t>(v.as_list().size());
    case Kind::kDict: return static_cast<int64_t>(v.as_dict().size());
    default: return invalid_argument(strformat("object of type '%s' has no len()", type_name(v).c_str()));
  }
}

Result<Value> f_length(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "length", {}));
  NB_ASSIGN_OR_RETURN(int64_t n, length_of(in));
  return Value::integer(n);
}

Result<Value> f_default(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "default", {"default_value", "boolean"}));
  if (in.is_undefined() || (truthy(b.get(1)) && !truthy(in))) return b.get_or(0, Value::string(""));
  return in;
}

Result<Value> f_trim(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "trim", {"chars"}));
  if (!b.is_none(0) && !b.get(0).is_string()) return invalid_argument("strip arg must be None or str");
  return Value::string(py_strip(py_str(in), b.get(0), true, true));
}

Result<Value> string_filter(const Value& in, const CallArgs& a, const char* name, std::string (*fn)(std::string_view)) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, name, {}));
  return Value::string(fn(py_str(in)));
}
Result<Value> f_upper(const Value& in, const CallArgs& a) { return string_filter(in, a, "upper", py_upper); }
Result<Value> f_lower(const Value& in, const CallArgs& a) { return string_filter(in, a, "lower", py_lower); }
Result<Value> f_capitalize(const Value& in, const CallArgs& a) { return string_filter(in, a, "capitalize", py_capitalize); }

// jinja2's title filter: words begin after '-', whitespace or an opening bracket.
std::string jinja_title(std::string_view s) {
  std::u32string cps = utf8_decode(s);
  auto is_sep = [](char32_t c) { return c == U'-' || c == U'(' || c == U'{' || c == U'[' || c == U'<' || py_isspace(c); };
  std::string out;
  for (size_t i = 0; i < cps.size();) {
    size_t j = i;
    bool sep = is_sep(cps[i]);
    while (j < cps.size() && is_sep(cps[j]) == sep) ++j;
    std::string chunk = utf8_encode(std::u32string_view(cps).substr(i, j - i));
    out += sep ? chunk : py_upper(utf8_encode(std::u32string(1, cps[i]))) + py_lower(utf8_encode(std::u32string_view(cps).substr(i + 1, j - i - 1)));
    i = j;
  }
  return out;
}
Result<Value> f_title(const Value& in, const CallArgs& a) { return string_filter(in, a, "title", jinja_title); }

std::string identity(std::string_view s) { return std::string(s); }
Result<Value> f_string(const Value& in, const CallArgs& a) { return string_filter(in, a, "string", identity); }
Result<Value> f_safe(const Value& in, const CallArgs& a) { return string_filter(in, a, "safe", identity); }

std::string html_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}
Result<Value> f_escape(const Value& in, const CallArgs& a) { return string_filter(in, a, "escape", html_escape); }

Result<Value> f_tojson(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "tojson", {"ensure_ascii", "indent", "separators", "sort_keys"}));
  JsonDumpOptions o;
  o.ensure_ascii = truthy(b.get(0));
  o.sort_keys = truthy(b.get(3));
  const Value& indent = b.get(1);
  if (!b.is_none(1)) {
    o.has_indent = true;
    if (indent.is_string()) o.indent = indent.as_string();
    else if (indent.kind() == Kind::kInt || indent.kind() == Kind::kBool) o.indent.assign(std::max<int64_t>(0, indent.as_int()), ' ');
    else return invalid_argument("tojson: indent must be an int or a str");
    o.item_separator = ",";
  }
  if (!b.is_none(2)) {
    const Value& sep = b.get(2);
    if (!sep.is_sequence() || sep.as_list().size() != 2 || !sep.as_list()[0].is_string() || !sep.as_list()[1].is_string())
      return invalid_argument("tojson: separators must be a pair of strings");
    o.item_separator = sep.as_list()[0].as_string();
    o.key_separator = sep.as_list()[1].as_string();
  }
  NB_ASSIGN_OR_RETURN(std::string s, py_json_dumps(in, o));
  return Value::string(std::move(s));
}

Result<Value> f_join(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "join", {"d", "attribute"}));
  NB_ASSIGN_OR_RETURN(ValueList items, iterate(in));
  std::string sep = b.has(0) ? py_str(b.get(0)) : "", out;
  for (size_t i = 0; i < items.size(); ++i) {
    Value item = items[i];
    if (!b.is_none(1)) {
      NB_ASSIGN_OR_RETURN(item, lookup_path(item, b.get(1)));
    }
    if (i) out += sep;
    out += py_str(item);
  }
  return Value::string(std::move(out));
}

Result<Value> f_list(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "list", {}));
  NB_ASSIGN_OR_RETURN(ValueList items, iterate(in));
  return Value::list(std::move(items));
}

Result<Value> f_first(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "first", {}));
  NB_ASSIGN_OR_RETURN(ValueList items, iterate(in));
  if (items.empty()) return Value::undefined("No first item, sequence was empty.");
  return items.front();
}

Result<Value> f_last(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "last", {}));
  NB_ASSIGN_OR_RETURN(ValueList items, iterate(in));
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}

Result<Value> f_reverse(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "reverse", {}));
  if (in.is_string()) {
    std::u32string cps = utf8_decode(in.as_string());
    std::reverse(cps.begin(), cps.end());
    return Value::string(utf8_encode(cps));
  }
  NB_ASSIGN_OR_RETURN(ValueList items, iterate(in));
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

Result<Value> f_items(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "items", {}));
  if (in.is_undefined()) return Value::list({});
  if (!in.is_dict()) return invalid_argument("Can only get item pairs from a mapping.");
  ValueList out;
  for (const auto& [k, v] : in.as_dict().items()) out.push_back(Value::tuple({Value::string(k), v}));
  return Value::list(std::move(out));
}

Result<Value> f_replace(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "replace", {"old", "new", "count"}, 2));
  int64_t count = -1;
  if (!b.is_none(2)) {
    if (b.get(2).kind() != Kind::kInt && b.get(2).kind() != Kind::kBool)
      return invalid_argument("replace: count must be an integer");
    count = b.get(2).as_int();
  }
  return Value::string(py_replace(py_str(in), py_str(b.get(0)), py_str(b.get(1)), count));
}

Result<Value> f_abs(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "abs", {}));
  if (in.is_float()) return Value::number(std::fabs(in.as_float()));
  if (in.is_number()) return Value::integer(std::llabs(in.as_int()));
  return invalid_argument(strformat("bad operand type for abs(): '%s'", type_name(in).c_str()));
}

// Python's float(str): decimal / exponent / inf / nan with optional '_' between digits.
bool parse_py_float(const std::string& text, double* out) {
  std::string s = py_strip(text, Value(), true, true), clean;
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '_') {
      bool ok = i > 0 && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i - 1])) &&
                std::isdigit(static_cast<unsigned char>(s[i + 1]));
      if (!ok) return false;
      continue;
    }
    if (c == 'x' || c == 'X' || c == 'p' || c == 'P') return false;  // strtod's hex floats
    clean += c;
  }
  char* end = nullptr;
  *out = std::strtod(clean.c_str(), &end);
  return end == clean.c_str() + clean.size();
}

// Python's int(str, base).
bool parse_py_int(const std::string& text, int base, int64_t* out) {
  std::string s = py_strip(text, Value(), true, true), clean;
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) clean += s[i++];
  if (i >= s.size()) return false;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (c == '_' && i + 1 < s.size() && s[i + 1] != '_' && clean.size() > 0 && clean.back() != '+' && clean.back() != '-')
      continue;
    if (!std::isalnum(static_cast<unsigned char>(c))) return false;
    clean += c;
  }
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(clean.c_str(), &end, base);
  if (errno == ERANGE || end != clean.c_str() + clean.size()) return false;
  *out = v;
  return true;
}

Result<Value> f_int(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "int", {"default", "base"}));
  Value fallback = b.get_or(0, Value::integer(0));
  int base = b.has(1) && b.get(1).is_int() ? static_cast<int>(b.get(1).as_int()) : 10;
  if (in.is_undefined()) return undefined_error(in);
  if (in.is_number()) {
    if (!in.is_float()) return Value::integer(in.as_int());
    double f = in.as_float();
    if (std::isnan(f)) return fallback;
    if (std::isinf(f) || std::fabs(f) >= 9.2e18) return invalid_argument("int: float value out of range");
    return Value::integer(static_cast<int64_t>(std::trunc(f)));
  }
  if (!in.is_string()) return fallback;
  int64_t i = 0;
  if (parse_py_int(in.as_string(), base, &i)) return Value::integer(i);
  double f = 0;  // "42.23"|int is 42, through float()
  if (parse_py_float(in.as_string(), &f) && std::isfinite(f) && std::fabs(f) < 9.2e18)
    return Value::integer(static_cast<int64_t>(std::trunc(f)));
  return fallback;
}

Result<Value> f_float(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "float", {"default"}));
  if (in.is_undefined()) return undefined_error(in);
  if (in.is_number()) return Value::number(in.as_float());
  double f = 0;
  if (in.is_string() && parse_py_float(in.as_string(), &f)) return Value::number(f);
  return b.get_or(0, Value::number(0.0));
}

// Python's round(x, n): correctly rounded, ties to even (printf rounds the exact binary value).
double py_round(double x, int64_t digits) {
  if (!std::isfinite(x) || digits > 300) return x;
  if (digits < 0) {
    double scale = std::pow(10.0, static_cast<double>(-digits));
    return std::nearbyint(x / scale) * scale;
  }
  char buf[512];
  std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(digits), x);
  return std::strtod(buf, nullptr);
}

Result<Value> f_round(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "round", {"precision", "method"}));
  int64_t precision = 0;
  if (b.has(0)) {
    if (b.get(0).kind() != Kind::kInt && b.get(0).kind() != Kind::kBool) return invalid_argument("round: precision must be an integer");
    precision = b.get(0).as_int();
  }
  std::string method = b.has(1) ? py_str(b.get(1)) : "common";
  if (method != "common" && method != "ceil" && method != "floor")
    return invalid_argument("method must be common, ceil or floor");
  if (!in.is_number()) return invalid_argument(strformat("type %s doesn't define __round__ method", type_name(in).c_str()));
  if (method == "common") {
    if (!in.is_float()) return Value::integer(in.as_int());  // round(int, n) stays an int
    return Value::number(py_round(in.as_float(), precision));
  }
  // math.ceil / math.floor return Python ints, so the result is never -0.0.
  double scale = std::pow(10.0, static_cast<double>(precision));
  double x = in.as_float() * scale;
  double r = method == "ceil" ? std::ceil(x) : std::floor(x);
  if (r == 0) r = 0.0;
  return Value::number(r / scale);
}

Result<Value> f_indent(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind(a, "indent", {"width", "first", "blank"}));
  std::string ind = b.get(0).is_string() ? b.get(0).as_string()
                                         : std::string(std::max<int64_t>(0, b.has(0) ? b.get(0).as_int() : 4), ' ');
  if (!in.is_string()) return invalid_argument(strformat("indent: expected a string, got %s", type_name(in).c_str()));
  std::vector<std::string> lines = py_splitlines(in.as_string() + "\n", false);
  std::string rv;
  if (truthy(b.get(2))) {
    for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + ind : "") + lines[i];
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? "" : ind + lines[i]);
  }
  if (truthy(b.get(1))) rv = ind + rv;
  return Value::string(std::move(rv));
}

Result<Value> f_map(const Value& in, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(ValueList items, iterate(in));
  ValueList out;
  const Value* attribute = nullptr;
  Value fallback = Value::none();
  for (const auto& [k, v] : a.kwargs) {
    if (k == "attribute") attribute = &v;
    else if (k == "default") fallback = v;
  }
  if (a.args.empty() && attribute) {
    for (const Value& item : items) {
      NB_ASSIGN_OR_RETURN(Value v, lookup_path(item, *attribute));
      out.push_back(v.is_undefined() && !fallback.is_none() ? fallback : v);
    }
    return Value::list(std::move(out));
  }
  if (a.args.empty() || !a.args[0].is_string()) return invalid_argument("map requires a filter argument");
  FilterFn fn = find_filter(a.args[0].as_string());
  if (!fn) return invalid_argument("No filter named '" + a.args[0].as_string() + "'");
  CallArgs rest{ValueList(a.args.begin() + 1, a.args.end()), a.kwargs};
  for (const Value& item : items) {
    NB_ASSIGN_OR_RETURN(Value v, fn(item, rest));
    out.push_back(v);
  }
  return Value::list(std::move(out));
}

// select / reject / selectattr / rejectattr.
Result<Value> select_impl(const Value& in, const CallArgs& a, bool by_attr, bool keep_if) {
  size_t off = by_attr ? 1 : 0;
  if (by_attr && a.args.empty()) return invalid_argument("Missing parameter for attribute name");
  TestFn test = nullptr;
  if (a.args.size() > off) {
    if (!a.args[off].is_string() || !(test = find_test(a.args[off].as_string())))
      return invalid_argument("No test named " + py_repr(a.args[off]));
  }
  CallArgs rest;
  if (a.args.size() > off + 1) rest.args.assign(a.args.begin() + static_cast<long>(off) + 1, a.args.end());
  rest.kwargs = a.kwargs;
  NB_ASSIGN_OR_RETURN(ValueList items, iterate(in));
  ValueList out;
  for (const Value& item : items) {
    Value v = item;
    if (by_attr) {
      NB_ASSIGN_OR_RETURN(v, lookup_path(item, a.args[0]));
    }
    bool pass = truthy(v);
    if (test) {
      NB_ASSIGN_OR_RETURN(pass, test(v, rest));
    }
    if (pass == keep_if) out.push_back(item);
  }
  return Value::list(std::move(out));
}
Result<Value> f_select(const Value& in, const CallArgs& a) { return select_impl(in, a, false, true); }
Result<Value> f_reject(const Value& in, const CallArgs& a) { return select_impl(in, a, false, false); }
Result<Value> f_selectattr(const Value& in, const CallArgs& a) { return select_impl(in, a, true, true); }
Result<Value> f_rejectattr(const Value& in, const CallArgs& a) { return select_impl(in, a, true, false); }

struct FilterEntry {
  const char* name;
  FilterFn fn;
};
const FilterEntry kFilters[] = {
    {"abs", f_abs},           {"capitalize", f_capitalize}, {"count", f_length},   {"d", f_default},
    {"default", f_default},   {"e", f_escape},              {"escape", f_escape},  {"first", f_first},
    {"float", f_float},       {"indent", f_indent},         {"int", f_int},        {"items", f_items},
    {"join", f_join},         {"last", f_last},             {"length", f_length},  {"list", f_list},
    {"lower", f_lower},       {"map", f_map},               {"reject", f_reject},  {"rejectattr", f_rejectattr},
    {"replace", f_replace},   {"reverse", f_reverse},       {"round", f_round},    {"safe", f_safe},
    {"select", f_select},     {"selectattr", f_selectattr}, {"string", f_string},  {"title", f_title},
    {"tojson", f_tojson},     {"trim", f_trim},             {"upper", f_upper},
};

// ---- tests -----------------------------------------------------------------------------------

Result<BoundArgs> bind_test(const CallArgs& a, const char* test, std::initializer_list<const char*> params, size_t required = 0) {
  return BoundArgs::bind(a, strformat("test '%s'", test), params, required);
}

#define NB_SIMPLE_TEST(fn_name, test_name, expr)                 \
  Result<bool> fn_name(const Value& v, const CallArgs& a) {      \
    NB_ASSIGN_OR_RETURN(BoundArgs b, bind_test(a, test_name, {})); \
    return (expr);                                               \
  }

NB_SIMPLE_TEST(t_defined, "defined", !v.is_undefined())
NB_SIMPLE_TEST(t_undefined, "undefined", v.is_undefined())
NB_SIMPLE_TEST(t_none, "none", v.is_none())
NB_SIMPLE_TEST(t_boolean, "boolean", v.is_bool())
NB_SIMPLE_TEST(t_true, "true", v.is_bool() && v.as_bool())
NB_SIMPLE_TEST(t_false, "false", v.is_bool() && !v.as_bool())
NB_SIMPLE_TEST(t_integer, "integer", v.is_int())
NB_SIMPLE_TEST(t_float, "float", v.is_float())
NB_SIMPLE_TEST(t_number, "number", v.is_number())
NB_SIMPLE_TEST(t_string, "string", v.is_string())
NB_SIMPLE_TEST(t_mapping, "mapping", v.is_dict())
NB_SIMPLE_TEST(t_callable, "callable", v.is_callable())
// Undefined has __len__, __getitem__ and __iter__, so jinja2 calls it a sequence and iterable.
NB_SIMPLE_TEST(t_sequence, "sequence", v.is_undefined() || v.is_string() || v.is_sequence() || v.is_dict())
NB_SIMPLE_TEST(t_iterable, "iterable", v.is_undefined() || v.is_string() || v.is_sequence() || v.is_dict())
// jinja2 tests str(value).islower() / .isupper().
NB_SIMPLE_TEST(t_lower, "lower", py_islower(py_str(v)))
NB_SIMPLE_TEST(t_upper, "upper", py_isupper(py_str(v)))
#undef NB_SIMPLE_TEST

// jinja2: `value % 2 == 1`, `value % num == 0`, with Python's % (floats allowed).
Result<bool> modulo_equals(const Value& v, int64_t divisor, int64_t want) {
  NB_ASSIGN_OR_RETURN(Value m, binary_op("%", v, Value::integer(divisor)));
  return py_equal(m, Value::integer(want));
}
Result<bool> t_odd(const Value& v, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind_test(a, "odd", {}));
  return modulo_equals(v, 2, 1);
}
Result<bool> t_even(const Value& v, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind_test(a, "even", {}));
  return modulo_equals(v, 2, 0);
}
Result<bool> t_divisibleby(const Value& v, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind_test(a, "divisibleby", {"num"}, 1));
  NB_ASSIGN_OR_RETURN(Value m, binary_op("%", v, b.get(0)));
  return py_equal(m, Value::integer(0));
}

Result<bool> t_in(const Value& v, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind_test(a, "in", {"seq"}, 1));
  return py_contains(b.get(0), v);
}

// `is sameas`: Python identity; None / True / False and small ints are singletons in CPython.
Result<bool> t_sameas(const Value& v, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind_test(a, "sameas", {"other"}, 1));
  const Value& o = b.get(0);
  if (v.kind() != o.kind()) return false;
  switch (v.kind()) {
    case Kind::kNone:
    case Kind::kUndefined: return v.is_none();
    case Kind::kBool: return v.as_bool() == o.as_bool();
    case Kind::kInt: return v.as_int() == o.as_int() && v.as_int() >= -5 && v.as_int() <= 256;
    case Kind::kList:
    case Kind::kTuple: return &v.as_list() == &o.as_list();
    case Kind::kDict: return &v.as_dict() == &o.as_dict();
    case Kind::kNamespace: return &v.ns_attrs() == &o.ns_attrs();
    default: return false;
  }
}

template <int kOp>  // 0 ==, 1 !=, 2 <, 3 <=, 4 >, 5 >=
Result<bool> t_compare(const Value& v, const CallArgs& a) {
  static const char* const kNames[] = {"==", "!=", "<", "<=", ">", ">="};
  NB_ASSIGN_OR_RETURN(BoundArgs b, bind_test(a, kNames[kOp], {"other"}, 1));
  if (kOp == 0) return py_equal(v, b.get(0));
  if (kOp == 1) return !py_equal(v, b.get(0));
  NB_ASSIGN_OR_RETURN(int c, py_compare(v, b.get(0), kNames[kOp]));
  if (c == 2) return false;
  return kOp == 2 ? c < 0 : kOp == 3 ? c <= 0 : kOp == 4 ? c > 0 : c >= 0;
}

struct TestEntry {
  const char* name;
  TestFn fn;
};
const TestEntry kTests[] = {
    {"defined", t_defined},   {"undefined", t_undefined},     {"none", t_none},
    {"boolean", t_boolean},   {"true", t_true},               {"false", t_false},
    {"integer", t_integer},   {"float", t_float},             {"number", t_number},
    {"string", t_string},     {"mapping", t_mapping},         {"callable", t_callable},
    {"sequence", t_sequence}, {"iterable", t_iterable},       {"lower", t_lower},
    {"upper", t_upper},       {"odd", t_odd},                 {"even", t_even},
    {"divisibleby", t_divisibleby}, {"in", t_in},             {"sameas", t_sameas},
    {"==", t_compare<0>},     {"eq", t_compare<0>},           {"equalto", t_compare<0>},
    {"!=", t_compare<1>},     {"ne", t_compare<1>},           {"<", t_compare<2>},
    {"lt", t_compare<2>},     {"lessthan", t_compare<2>},     {"<=", t_compare<3>},
    {"le", t_compare<3>},     {">", t_compare<4>},            {"gt", t_compare<4>},
    {"greaterthan", t_compare<4>}, {">=", t_compare<5>},      {"ge", t_compare<5>},
};

}  // namespace

FilterFn find_filter(const std::string& name) {
  for (const auto& f : kFilters)
    if (name == f.name) return f.fn;
  return nullptr;
}

TestFn find_test(const std::string& name) {
  for (const auto& t : kTests)
    if (name == t.name) return t.fn;
  return nullptr;
}

}  // namespace nb::jinja
