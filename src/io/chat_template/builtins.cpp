#include "io/chat_template/builtins.h"

#include <cmath>
#include <cstdlib>
#include <ctime>

#include "io/chat_template/args.h"
#include "io/chat_template/methods.h"
#include "io/chat_template/unicode.h"

namespace nb::jinja {

// ---- lookup, iteration -----------------------------------------------------------------------

Status undefined_error(const Value& undefined) {
  return invalid_argument(undefined.undefined_message().empty() ? "value is undefined" : undefined.undefined_message());
}

// jinja2's object_type_repr, used in "'dict object' has no attribute 'x'".
static std::string object_type_repr(const Value& v) {
  if (v.is_none()) return "None";
  return type_name(v) + " object";
}

static Value missing_attr(const Value& obj, const std::string& name) {
  return Value::undefined(strformat("'%s' has no attribute '%s'", object_type_repr(obj).c_str(), name.c_str()));
}

Result<Value> get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) return undefined_error(obj);
  if (std::optional<Value> m = find_method(obj, name)) return *m;
  if (obj.is_dict()) {
    if (const Value* v = obj.as_dict().find(name)) return *v;
  } else if (obj.is_namespace()) {
    if (const Value* v = obj.ns_attrs().find(name)) return *v;
  }
  return missing_attr(obj, name);
}

static Result<int64_t> python_index(const Value& key, size_t size, bool* in_range) {
  int64_t i = key.as_int();
  if (i < 0) i += static_cast<int64_t>(size);
  *in_range = i >= 0 && i < static_cast<int64_t>(size);
  return i;
}

Result<Value> get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) return undefined_error(obj);
  bool int_key = key.kind() == Kind::kInt || key.kind() == Kind::kBool;
  if (obj.is_sequence() && int_key) {
    bool ok = false;
    NB_ASSIGN_OR_RETURN(int64_t i, python_index(key, obj.as_list().size(), &ok));
    if (ok) return obj.as_list()[static_cast<size_t>(i)];
  } else if (obj.is_string() && int_key) {
    std::u32string cps = utf8_decode(obj.as_string());
    bool ok = false;
    NB_ASSIGN_OR_RETURN(int64_t i, python_index(key, cps.size(), &ok));
    if (ok) return Value::string(utf8_encode(std::u32string(1, cps[static_cast<size_t>(i)])));
  } else if (obj.is_dict() && key.is_string()) {
    if (const Value* v = obj.as_dict().find(key.as_string())) return *v;
  }
  // obj[key] failed: jinja2 falls back to the attribute of that name.
  if (key.is_string()) return get_attr(obj, key.as_string());
  return Value::undefined(strformat("'%s' has no element %s", object_type_repr(obj).c_str(), py_repr(key).c_str()));
}

// Python's slice.indices(): clamps start / stop for the step's direction.
static void slice_indices(int64_t len, const Value& start_v, const Value& stop_v, int64_t step, int64_t* start,
                          int64_t* stop) {
  auto clamp = [&](const Value& v, int64_t dflt) {
    if (v.is_none() || v.is_undefined()) return dflt;
    int64_t x = v.as_int();
    if (x < 0) {
      x += len;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= len) {
      x = step < 0 ? len - 1 : len;
    }
    return x;
  };
  *start = clamp(start_v, step < 0 ? len - 1 : 0);
  *stop = clamp(stop_v, step < 0 ? -1 : len);
}

template <typename Seq>
static Seq slice_seq(const Seq& in, const Value& start_v, const Value& stop_v, int64_t step) {
  int64_t start = 0, stop = 0;
  slice_indices(static_cast<int64_t>(in.size()), start_v, stop_v, step, &start, &stop);
  Seq out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(in[static_cast<size_t>(i)]);
  return out;
}

Result<Value> get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) return undefined_error(obj);
  auto ok_index = [](const Value& v) {
    return v.is_none() || v.is_undefined() || v.kind() == Kind::kInt || v.kind() == Kind::kBool;
  };
  // jinja2 compiles slices to plain Python slicing, so these TypeErrors are not turned into Undefined.
  if (obj.is_dict()) return invalid_argument("unhashable type: 'slice'");
  if (!obj.is_sequence() && !obj.is_string())
    return invalid_argument(strformat("'%s' object is not subscriptable", type_name(obj).c_str()));
  if (!ok_index(start) || !ok_index(stop) || !ok_index(step))
    return invalid_argument("slice indices must be integers or None or have an __index__ method");
  int64_t st = (step.is_none() || step.is_undefined()) ? 1 : step.as_int();
  if (st == 0) return invalid_argument("slice step cannot be zero");
  if (obj.is_string())
    return Value::string(utf8_encode(slice_seq(utf8_decode(obj.as_string()), start, stop, st)));
  ValueList items = slice_seq(obj.as_list(), start, stop, st);
  return obj.kind() == Kind::kTuple ? Value::tuple(std::move(items)) : Value::list(std::move(items));
}

Result<ValueList> iterate(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined: return ValueList{};
    case Kind::kList:
    case Kind::kTuple: return v.as_list();
    case Kind::kDict: {
      ValueList keys;
      for (const auto& kv : v.as_dict().items()) keys.push_back(Value::string(kv.first));
      return keys;
    }
    case Kind::kString: {
      ValueList chars;
      for (char32_t c : utf8_decode(v.as_string())) chars.push_back(Value::string(utf8_encode(std::u32string(1, c))));
      return chars;
    }
    default: return invalid_argument(strformat("'%s' object is not iterable", type_name(v).c_str()));
  }
}

// ---- globals ---------------------------------------------------------------------------------

static Result<Value> g_namespace(const CallArgs& a) {
  auto attrs = std::make_shared<Dict>();
  if (a.args.size() > 1) return invalid_argument("namespace() takes at most 1 positional argument");
  if (a.args.size() == 1) {
    if (!a.args[0].is_dict()) return invalid_argument("namespace() positional argument must be a dict");
    for (const auto& [k, v] : a.args[0].as_dict().items()) attrs->set(k, v);
  }
  for (const auto& [k, v] : a.kwargs) attrs->set(k, v);
  return Value::ns(std::move(attrs));
}

static Result<Value> g_dict(const CallArgs& a) {
  Dict d;
  if (a.args.size() > 1) return invalid_argument("dict expected at most 1 argument");
  if (a.args.size() == 1) {
    if (!a.args[0].is_dict()) return invalid_argument("dict() positional argument must be a dict");
    d = a.args[0].as_dict();
  }
  for (const auto& [k, v] : a.kwargs) d.set(k, v);
  return Value::dict(std::move(d));
}

static Result<Value> g_range(const CallArgs& a) {
  if (!a.kwargs.empty()) return invalid_argument("range() takes no keyword arguments");
  if (a.args.empty() || a.args.size() > 3) return invalid_argument("range expected 1 to 3 arguments");
  for (const Value& v : a.args)
    if (v.kind() != Kind::kInt && v.kind() != Kind::kBool)
      return invalid_argument(strformat("'%s' object cannot be interpreted as an integer", type_name(v).c_str()));
  int64_t start = 0, stop = 0, step = 1;
  if (a.args.size() == 1) stop = a.args[0].as_int();
  else start = a.args[0].as_int(), stop = a.args[1].as_int();
  if (a.args.size() == 3) step = a.args[2].as_int();
  if (step == 0) return invalid_argument("range() arg 3 must not be zero");
  ValueList items;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (items.size() >= 100000)  // jinja2's sandbox MAX_RANGE
      return invalid_argument("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    items.push_back(Value::integer(i));
  }
  return Value::list(std::move(items));
}

static Result<Value> g_raise_exception(const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, "raise_exception", {"message"}, 1));
  return invalid_argument(py_str(b.get(0)));
}

static Result<Value> g_strftime_now(const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, "strftime_now", {"format"}, 1));
  if (!b.get(0).is_string()) return invalid_argument("strftime_now() argument must be str");
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buf[512];
  size_t n = std::strftime(buf, sizeof buf, b.get(0).as_string().c_str(), &local);
  if (n == 0 && !b.get(0).as_string().empty()) return invalid_argument("strftime_now(): result too long or bad format");
  return Value::string(std::string(buf, n));
}

const Dict& template_globals() {
  static const Dict globals = [] {
    Dict d;
    d.set("namespace", Value::callable("namespace", g_namespace));
    d.set("dict", Value::callable("dict", g_dict));
    d.set("range", Value::callable("range", g_range));
    d.set("raise_exception", Value::callable("raise_exception", g_raise_exception, /*verbatim_errors=*/true));
    d.set("strftime_now", Value::callable("strftime_now", g_strftime_now));
    return d;
  }();
  return globals;
}

}  // namespace nb::jinja
