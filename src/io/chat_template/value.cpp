#include "io/chat_template/value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "io/chat_template/unicode.h"

namespace nb::jinja {

// ---- Dict and constructors -------------------------------------------------------------------

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : items_)
    if (k == key) return &v;
  return nullptr;
}

void Dict::set(const std::string& key, Value value) {
  for (auto& [k, v] : items_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  items_.emplace_back(key, std::move(value));
}

Value Value::undefined(std::string message) {
  Value v;
  v.s_ = std::move(message);
  return v;
}
Value Value::none() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.b_ = b;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  return v;
}
Value Value::number(double f) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.f_ = f;
  return v;
}
Value Value::string(std::string s) {
  Value v;
  v.kind_ = Kind::kString;
  v.s_ = std::move(s);
  return v;
}
Value Value::list(ValueList items) {
  Value v;
  v.kind_ = Kind::kList;
  v.list_ = std::make_shared<const ValueList>(std::move(items));
  return v;
}
Value Value::tuple(ValueList items) {
  Value v = list(std::move(items));
  v.kind_ = Kind::kTuple;
  return v;
}
Value Value::dict(Dict d) {
  Value v;
  v.kind_ = Kind::kDict;
  v.dict_ = std::make_shared<const Dict>(std::move(d));
  return v;
}
Value Value::ns(std::shared_ptr<Dict> attrs, bool read_only) {
  Value v;
  v.kind_ = Kind::kNamespace;
  v.ns_ = std::move(attrs);
  v.b_ = read_only;
  return v;
}
Value Value::callable(std::string name, std::function<Result<Value>(const CallArgs&)> fn, bool verbatim_errors) {
  Value v;
  v.kind_ = Kind::kCallable;
  v.fn_ = std::make_shared<const Callable>(Callable{std::move(name), std::move(fn), verbatim_errors});
  return v;
}

// ---- truthiness, names, str() / repr() -------------------------------------------------------

bool truthy(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
    case Kind::kNone: return false;
    case Kind::kBool: return v.as_bool();
    case Kind::kInt: return v.as_int() != 0;
    case Kind::kFloat: return v.as_float() != 0.0;
    case Kind::kString: return !v.as_string().empty();
    case Kind::kList:
    case Kind::kTuple: return !v.as_list().empty();
    case Kind::kDict: return v.as_dict().size() != 0;
    case Kind::kNamespace:
    case Kind::kCallable: return true;
  }
  return false;
}

std::string type_name(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined: return "Undefined";
    case Kind::kNone: return "NoneType";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kList: return "list";
    case Kind::kTuple: return "tuple";
    case Kind::kDict: return "dict";
    case Kind::kNamespace: return v.ns_read_only() ? "LoopContext" : "Namespace";
    case Kind::kCallable: return "function";
  }
  return "object";
}

std::string py_float_repr(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  if (f == 0) return std::signbit(f) ? "-0.0" : "0.0";
  // Shortest digit string that reads back to the same double (what Python's repr prints).
  char buf[64];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*e", prec - 1, f);
    if (std::strtod(buf, nullptr) == f) break;
  }
  std::string s(buf);
  std::string sign = s[0] == '-' ? "-" : "";
  if (!sign.empty()) s.erase(0, 1);
  size_t e = s.find('e');
  int exp10 = std::atoi(s.c_str() + e + 1);
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  int decpt = exp10 + 1;  // digits = d1 d2 ..., value = 0.d1d2... * 10^decpt
  if (decpt <= -4 || decpt > 16) {
    std::string out = sign;
    out.append(digits, 0, 1);
    if (digits.size() > 1) out.append(".").append(digits, 1, std::string::npos);
    char ebuf[16];
    std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    return out.append(ebuf);
  }
  std::string out = sign;
  if (decpt <= 0) {
    out.append("0.").append(static_cast<size_t>(-decpt), '0').append(digits);
  } else if (decpt >= static_cast<int>(digits.size())) {
    out.append(digits).append(decpt - digits.size(), '0').append(".0");
  } else {
    out.append(digits, 0, decpt).append(".").append(digits, decpt, std::string::npos);
  }
  return out;
}

static std::string repr_string(const std::string& s) {
  std::u32string cps = utf8_decode(s);
  bool has_single = cps.find(U'\'') != std::u32string::npos;
  bool has_double = cps.find(U'"') != std::u32string::npos;
  char32_t quote = (has_single && !has_double) ? U'"' : U'\'';
  std::string out(1, static_cast<char>(quote));
  for (char32_t c : cps) {
    char buf[16];
    if (c == quote || c == U'\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == U'\n') {
      out += "\\n";
    } else if (c == U'\r') {
      out += "\\r";
    } else if (c == U'\t') {
      out += "\\t";
    } else if (!py_isprintable(c)) {
      if (c <= 0xFF) std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
      else if (c <= 0xFFFF) std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      else std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
      out += buf;
    } else {
      append_utf8(out, c);
    }
  }
  out += static_cast<char>(quote);
  return out;
}

static std::string repr_dict(const Dict& d) {
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : d.items()) {
    if (!first) out += ", ";
    first = false;
    out += repr_string(k) + ": " + py_repr(v);
  }
  return out + "}";
}

std::string py_repr(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined: return "Undefined";
    case Kind::kString: return repr_string(v.as_string());
    case Kind::kList:
    case Kind::kTuple: {
      bool tuple = v.kind() == Kind::kTuple;
      std::string out = tuple ? "(" : "[";
      const ValueList& items = v.as_list();
      for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + py_repr(items[i]);
      if (tuple && items.size() == 1) out += ",";
      return out + (tuple ? ")" : "]");
    }
    default: return py_str(v);
  }
}

std::string py_str(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined: return "";
    case Kind::kNone: return "None";
    case Kind::kBool: return v.as_bool() ? "True" : "False";
    case Kind::kInt: return std::to_string(v.as_int());
    case Kind::kFloat: return py_float_repr(v.as_float());
    case Kind::kString: return v.as_string();
    case Kind::kList:
    case Kind::kTuple: return py_repr(v);
    case Kind::kDict: return repr_dict(v.as_dict());
    case Kind::kNamespace:
      return (v.ns_read_only() ? "<LoopContext " : "<Namespace ") + repr_dict(v.ns_attrs()) + ">";
    case Kind::kCallable: return "<function " + v.as_callable().name + ">";
  }
  return "";
}

// ---- ==, <, in -------------------------------------------------------------------------------

static bool int_like(const Value& v) { return v.kind() == Kind::kInt || v.kind() == Kind::kBool; }

bool py_equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (int_like(a) && int_like(b)) return a.as_int() == b.as_int();
    return a.as_float() == b.as_float();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Kind::kUndefined:
    case Kind::kNone: return true;
    case Kind::kString: return a.as_string() == b.as_string();
    case Kind::kList:
    case Kind::kTuple: {
      const ValueList &x = a.as_list(), &y = b.as_list();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!py_equal(x[i], y[i])) return false;
      return true;
    }
    case Kind::kDict: {
      if (a.as_dict().size() != b.as_dict().size()) return false;
      for (const auto& [k, v] : a.as_dict().items()) {
        const Value* other = b.as_dict().find(k);
        if (!other || !py_equal(v, *other)) return false;
      }
      return true;
    }
    case Kind::kNamespace: return &a.ns_attrs() == &b.ns_attrs();
    case Kind::kCallable: return &a.as_callable() == &b.as_callable();
    default: return false;
  }
}

// Returns 2 for unordered (NaN), like Python where every comparison is then False.
Result<int> py_compare(const Value& a, const Value& b, const char* op) {
  if (a.is_number() && b.is_number()) {
    if (int_like(a) && int_like(b)) return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int() ? 1 : 0;
    double x = a.as_float(), y = b.as_float();
    if (std::isnan(x) || std::isnan(y)) return 2;
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) {
    int c = a.as_string().compare(b.as_string());
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is_sequence() && a.kind() == b.kind()) {
    const ValueList &x = a.as_list(), &y = b.as_list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i)
      if (!py_equal(x[i], y[i])) return py_compare(x[i], y[i], op);
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  return invalid_argument(strformat("'%s' not supported between instances of '%s' and '%s'", op,
                                    type_name(a).c_str(), type_name(b).c_str()));
}

Result<bool> py_contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Kind::kUndefined: return false;
    case Kind::kString:
      if (!item.is_string())
        return invalid_argument(strformat("'in <string>' requires string as left operand, not %s",
                                          type_name(item).c_str()));
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Kind::kList:
    case Kind::kTuple:
      for (const Value& v : container.as_list())
        if (py_equal(v, item)) return true;
      return false;
    case Kind::kDict: return item.is_string() && container.as_dict().find(item.as_string()) != nullptr;
    default:
      return invalid_argument(strformat("argument of type '%s' is not iterable", type_name(container).c_str()));
  }
}

// ---- json.dumps ------------------------------------------------------------------------------

static void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (char32_t c : utf8_decode(s)) {
    char buf[16];
    switch (c) {
      case U'"': out += "\\\""; continue;
      case U'\\': out += "\\\\"; continue;
      case U'\n': out += "\\n"; continue;
      case U'\r': out += "\\r"; continue;
      case U'\t': out += "\\t"; continue;
      case U'\b': out += "\\b"; continue;
      case U'\f': out += "\\f"; continue;
      default: break;
    }
    if (c < 0x20 || (ensure_ascii && c >= 0x7F && c <= 0xFFFF)) {
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else if (ensure_ascii && c > 0xFFFF) {
      unsigned v = static_cast<unsigned>(c) - 0x10000;
      std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
      out += buf;
    } else {
      append_utf8(out, c);
    }
  }
  out += '"';
}

static Status json_value(std::string& out, const Value& v, const JsonDumpOptions& o, int level);

static std::string json_newline(const JsonDumpOptions& o, int level) {
  std::string s = "\n";
  for (int i = 0; i < level; ++i) s += o.indent;
  return s;
}

static Status json_list(std::string& out, const ValueList& items, const JsonDumpOptions& o, int level) {
  if (items.empty()) {
    out += "[]";
    return Status::ok();
  }
  out += '[';
  std::string nl = o.has_indent ? json_newline(o, level + 1) : "";
  out += nl;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += o.item_separator + nl;
    NB_RETURN_IF_ERROR(json_value(out, items[i], o, level + 1));
  }
  if (o.has_indent) out += json_newline(o, level);
  out += ']';
  return Status::ok();
}

static Status json_dict(std::string& out, const Dict& d, const JsonDumpOptions& o, int level) {
  if (d.size() == 0) {
    out += "{}";
    return Status::ok();
  }
  std::vector<const std::pair<std::string, Value>*> items;
  for (const auto& kv : d.items()) items.push_back(&kv);
  if (o.sort_keys)
    std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
  out += '{';
  std::string nl = o.has_indent ? json_newline(o, level + 1) : "";
  out += nl;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += o.item_separator + nl;
    json_string(out, items[i]->first, o.ensure_ascii);
    out += o.key_separator;
    NB_RETURN_IF_ERROR(json_value(out, items[i]->second, o, level + 1));
  }
  if (o.has_indent) out += json_newline(o, level);
  out += '}';
  return Status::ok();
}

static Status json_value(std::string& out, const Value& v, const JsonDumpOptions& o, int level) {
  if (level > 512) return invalid_argument("tojson: value nested too deeply");
  switch (v.kind()) {
    case Kind::kNone: out += "null"; return Status::ok();
    case Kind::kBool: out += v.as_bool() ? "true" : "false"; return Status::ok();
    case Kind::kInt: out += std::to_string(v.as_int()); return Status::ok();
    case Kind::kFloat: {
      double f = v.as_float();
      out += std::isnan(f) ? "NaN" : std::isinf(f) ? (f > 0 ? "Infinity" : "-Infinity") : py_float_repr(f);
      return Status::ok();
    }
    case Kind::kString: json_string(out, v.as_string(), o.ensure_ascii); return Status::ok();
    case Kind::kList:
    case Kind::kTuple: return json_list(out, v.as_list(), o, level);
    case Kind::kDict: return json_dict(out, v.as_dict(), o, level);
    default:
      return invalid_argument(strformat("Object of type %s is not JSON serializable", type_name(v).c_str()));
  }
}

Result<std::string> py_json_dumps(const Value& v, const JsonDumpOptions& options) {
  std::string out;
  NB_RETURN_IF_ERROR(json_value(out, v, options, 0));
  return out;
}

// ---- JSON -> Value ---------------------------------------------------------------------------

template <typename J>
static Value from_json_impl(const J& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value::none();
    case nlohmann::json::value_t::boolean: return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer: return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      uint64_t u = j.template get<uint64_t>();
      if (u <= static_cast<uint64_t>(INT64_MAX)) return Value::integer(static_cast<int64_t>(u));
      return Value::number(static_cast<double>(u));
    }
    case nlohmann::json::value_t::number_float: return Value::number(j.template get<double>());
    case nlohmann::json::value_t::string: return Value::string(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      ValueList items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json_impl(e));
      return Value::list(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) d.set(it.key(), from_json_impl(it.value()));
      return Value::dict(std::move(d));
    }
    default: return Value::none();  // binary / discarded: not produced by JSON text
  }
}

Value value_from_json(const nlohmann::ordered_json& j) { return from_json_impl(j); }
Value value_from_json(const nlohmann::json& j) { return from_json_impl(j); }

}  // namespace nb::jinja
