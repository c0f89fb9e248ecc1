#include "io/chat_template/methods.h"

#include <algorithm>

#include "io/chat_template/args.h"
#include "io/chat_template/unicode.h"

namespace nb::jinja {
namespace {

using StrFn = Result<Value> (*)(const std::string& self, const CallArgs& a);

Result<std::string> str_arg(const Value& v, const char* what) {
  if (!v.is_string())
    return invalid_argument(strformat("%s: must be str, not %s", what, type_name(v).c_str()));
  return v.as_string();
}

Result<int64_t> int_arg(const Value& v, const char* what) {
  if (v.kind() != Kind::kInt && v.kind() != Kind::kBool)
    return invalid_argument(strformat("%s: an integer is required, not %s", what, type_name(v).c_str()));
  return v.as_int();
}

Value string_list(const std::vector<std::string>& parts) {
  ValueList items;
  for (const auto& p : parts) items.push_back(Value::string(p));
  return Value::list(std::move(items));
}

// Python's start / end arguments of find(), startswith(): clamp into [0, n].
Result<std::pair<size_t, size_t>> span_args(const BoundArgs& b, size_t start_i, size_t n, const char* what) {
  int64_t len = static_cast<int64_t>(n), start = 0, end = len;
  if (!b.is_none(start_i)) {
    NB_ASSIGN_OR_RETURN(start, int_arg(b.get(start_i), what));
  }
  if (!b.is_none(start_i + 1)) {
    NB_ASSIGN_OR_RETURN(end, int_arg(b.get(start_i + 1), what));
  }
  if (start < 0) start = std::max<int64_t>(0, start + len);
  if (end < 0) end = std::max<int64_t>(0, end + len);
  end = std::min(end, len);
  return std::make_pair(static_cast<size_t>(start), static_cast<size_t>(std::max(start, end)));
}

Result<Value> starts_or_ends(const std::string& self, const CallArgs& a, bool starts) {
  const char* what = starts ? "startswith" : "endswith";
  NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, what, {"prefix", "start", "end"}, 1));
  std::u32string s = utf8_decode(self);
  NB_ASSIGN_OR_RETURN(auto span, span_args(b, 1, s.size(), what));
  if (span.first > s.size()) return Value::boolean(false);
  std::u32string_view view = std::u32string_view(s).substr(span.first, span.second - span.first);
  ValueList candidates;
  if (b.get(0).kind() == Kind::kTuple) candidates = b.get(0).as_list();
  else candidates.push_back(b.get(0));
  for (const Value& c : candidates) {
    NB_ASSIGN_OR_RETURN(std::string affix, str_arg(c, what));
    std::u32string x = utf8_decode(affix);
    if (x.size() > view.size()) continue;
    if (starts ? view.substr(0, x.size()) == x : view.substr(view.size() - x.size()) == x) return Value::boolean(true);
  }
  return Value::boolean(false);
}

Result<Value> m_startswith(const std::string& s, const CallArgs& a) { return starts_or_ends(s, a, true); }
Result<Value> m_endswith(const std::string& s, const CallArgs& a) { return starts_or_ends(s, a, false); }

Result<Value> strip_method(const std::string& s, const CallArgs& a, const char* what, bool left, bool right) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, what, {"chars"}, 0));
  if (!b.is_none(0) && !b.get(0).is_string())
    return invalid_argument(strformat("%s arg must be None or str", what));
  return Value::string(py_strip(s, b.get(0), left, right));
}
Result<Value> m_strip(const std::string& s, const CallArgs& a) { return strip_method(s, a, "strip", true, true); }
Result<Value> m_lstrip(const std::string& s, const CallArgs& a) { return strip_method(s, a, "lstrip", true, false); }
Result<Value> m_rstrip(const std::string& s, const CallArgs& a) { return strip_method(s, a, "rstrip", false, true); }

// str.split() / str.rsplit() without a separator: runs of whitespace, CPython's algorithm.
std::vector<std::string> split_whitespace(const std::u32string& s, int64_t maxsplit, bool from_right) {
  std::vector<std::u32string> parts;
  int64_t n = static_cast<int64_t>(s.size());
  auto sp = [&](int64_t k) { return py_isspace(s[static_cast<size_t>(k)]); };
  if (!from_right) {
    int64_t i = 0;
    while (maxsplit-- != 0) {
      while (i < n && sp(i)) ++i;
      if (i == n) break;
      int64_t j = i;
      while (i < n && !sp(i)) ++i;
      parts.push_back(s.substr(j, i - j));
    }
    while (i < n && sp(i)) ++i;
    if (i < n) parts.push_back(s.substr(i));
  } else {
    int64_t i = n - 1;
    while (maxsplit-- != 0) {
      while (i >= 0 && sp(i)) --i;
      if (i < 0) break;
      int64_t j = i;
      while (i >= 0 && !sp(i)) --i;
      parts.push_back(s.substr(i + 1, j - i));
    }
    while (i >= 0 && sp(i)) --i;
    if (i >= 0) parts.push_back(s.substr(0, i + 1));
    std::reverse(parts.begin(), parts.end());
  }
  std::vector<std::string> out;
  for (const auto& p : parts) out.push_back(utf8_encode(p));
  return out;
}

std::vector<std::string> split_on(const std::string& s, const std::string& sep, int64_t maxsplit, bool from_right) {
  std::vector<std::string> out;
  if (!from_right) {
    size_t start = 0;
    for (size_t at; maxsplit != 0 && (at = s.find(sep, start)) != std::string::npos; --maxsplit) {
      out.push_back(s.substr(start, at - start));
      start = at + sep.size();
    }
    out.push_back(s.substr(start));
    return out;
  }
  size_t end = s.size();
  while (maxsplit != 0 && end >= sep.size()) {
    size_t at = s.rfind(sep, end - sep.size());
    if (at == std::string::npos) break;
    out.push_back(s.substr(at + sep.size(), end - at - sep.size()));
    end = at;
    --maxsplit;
  }
  out.push_back(s.substr(0, end));
  std::reverse(out.begin(), out.end());
  return out;
}

Result<Value> split_method(const std::string& s, const CallArgs& a, bool from_right) {
  const char* what = from_right ? "rsplit" : "split";
  NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, what, {"sep", "maxsplit"}, 0));
  int64_t maxsplit = -1;
  if (b.has(1)) {
    NB_ASSIGN_OR_RETURN(maxsplit, int_arg(b.get(1), what));
  }
  if (b.is_none(0)) return string_list(split_whitespace(utf8_decode(s), maxsplit, from_right));
  NB_ASSIGN_OR_RETURN(std::string sep, str_arg(b.get(0), what));
  if (sep.empty()) return invalid_argument("empty separator");
  return string_list(split_on(s, sep, maxsplit, from_right));
}
Result<Value> m_split(const std::string& s, const CallArgs& a) { return split_method(s, a, false); }
Result<Value> m_rsplit(const std::string& s, const CallArgs& a) { return split_method(s, a, true); }

Result<Value> m_splitlines(const std::string& s, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, "splitlines", {"keepends"}, 0));
  return string_list(py_splitlines(s, truthy(b.get(0))));
}

Result<Value> m_replace(const std::string& s, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, "replace", {"old", "new", "count"}, 2));
  NB_ASSIGN_OR_RETURN(std::string old, str_arg(b.get(0), "replace"));
  NB_ASSIGN_OR_RETURN(std::string with, str_arg(b.get(1), "replace"));
  int64_t count = -1;
  if (b.has(2)) {
    NB_ASSIGN_OR_RETURN(count, int_arg(b.get(2), "replace"));
  }
  return Value::string(py_replace(s, old, with, count));
}

// find / rfind / index / rindex / count over code points.
Result<Value> find_method_impl(const std::string& self, const CallArgs& a, const char* what, bool from_right,
                               bool raise, bool count) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, what, {"sub", "start", "end"}, 1));
  NB_ASSIGN_OR_RETURN(std::string sub8, str_arg(b.get(0), what));
  std::u32string s = utf8_decode(self), sub = utf8_decode(sub8);
  NB_ASSIGN_OR_RETURN(auto span, span_args(b, 1, s.size(), what));
  if (span.first > s.size()) return Value::integer(count ? 0 : -1);
  std::u32string_view view = std::u32string_view(s).substr(span.first, span.second - span.first);
  if (count) {
    if (sub.empty()) return Value::integer(static_cast<int64_t>(view.size()) + 1);
    int64_t n = 0;
    for (size_t at = view.find(sub); at != std::u32string_view::npos; at = view.find(sub, at + sub.size())) ++n;
    return Value::integer(n);
  }
  size_t at = from_right ? view.rfind(sub) : view.find(sub);
  if (at == std::u32string_view::npos) {
    if (raise) return invalid_argument("substring not found");
    return Value::integer(-1);
  }
  return Value::integer(static_cast<int64_t>(at + span.first));
}
Result<Value> m_find(const std::string& s, const CallArgs& a) { return find_method_impl(s, a, "find", false, false, false); }
Result<Value> m_rfind(const std::string& s, const CallArgs& a) { return find_method_impl(s, a, "rfind", true, false, false); }
Result<Value> m_index(const std::string& s, const CallArgs& a) { return find_method_impl(s, a, "index", false, true, false); }
Result<Value> m_rindex(const std::string& s, const CallArgs& a) { return find_method_impl(s, a, "rindex", true, true, false); }
Result<Value> m_count(const std::string& s, const CallArgs& a) { return find_method_impl(s, a, "count", false, false, true); }

Status check_no_args(const CallArgs& a, const char* what) {
  if (!a.args.empty() || !a.kwargs.empty()) return invalid_argument(strformat("%s() takes no arguments", what));
  return Status::ok();
}
Result<Value> m_upper(const std::string& s, const CallArgs& a) {
  NB_RETURN_IF_ERROR(check_no_args(a, "upper"));
  return Value::string(py_upper(s));
}
Result<Value> m_lower(const std::string& s, const CallArgs& a) {
  NB_RETURN_IF_ERROR(check_no_args(a, "lower"));
  return Value::string(py_lower(s));
}
Result<Value> m_title(const std::string& s, const CallArgs& a) {
  NB_RETURN_IF_ERROR(check_no_args(a, "title"));
  return Value::string(py_title(s));
}
Result<Value> m_capitalize(const std::string& s, const CallArgs& a) {
  NB_RETURN_IF_ERROR(check_no_args(a, "capitalize"));
  return Value::string(py_capitalize(s));
}

Result<Value> m_join(const std::string& s, const CallArgs& a) {
  NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, "join", {"iterable"}, 1));
  const Value& it = b.get(0);
  ValueList items;
  if (it.is_sequence()) items = it.as_list();
  else if (it.is_dict()) for (const auto& kv : it.as_dict().items()) items.push_back(Value::string(kv.first));
  else if (it.is_string()) for (char32_t c : utf8_decode(it.as_string())) items.push_back(Value::string(utf8_encode(std::u32string(1, c))));
  else return invalid_argument(strformat("can only join an iterable, not %s", type_name(it).c_str()));
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!items[i].is_string())
      return invalid_argument(strformat("sequence item %zu: expected str instance, %s found", i, type_name(items[i]).c_str()));
    if (i) out += s;
    out += items[i].as_string();
  }
  return Value::string(out);
}

Result<Value> affix_method(const std::string& s, const CallArgs& a, bool prefix) {
  const char* what = prefix ? "removeprefix" : "removesuffix";
  NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, what, {"affix"}, 1));
  NB_ASSIGN_OR_RETURN(std::string x, str_arg(b.get(0), what));
  if (prefix && s.compare(0, x.size(), x) == 0) return Value::string(s.substr(x.size()));
  if (!prefix && s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0)
    return Value::string(s.substr(0, s.size() - x.size()));
  return Value::string(s);
}
Result<Value> m_removeprefix(const std::string& s, const CallArgs& a) { return affix_method(s, a, true); }
Result<Value> m_removesuffix(const std::string& s, const CallArgs& a) { return affix_method(s, a, false); }

Result<Value> partition_method(const std::string& s, const CallArgs& a, bool from_right) {
  const char* what = from_right ? "rpartition" : "partition";
  NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, what, {"sep"}, 1));
  NB_ASSIGN_OR_RETURN(std::string sep, str_arg(b.get(0), what));
  if (sep.empty()) return invalid_argument("empty separator");
  size_t at = from_right ? s.rfind(sep) : s.find(sep);
  if (at == std::string::npos) {
    if (from_right) return Value::tuple({Value::string(""), Value::string(""), Value::string(s)});
    return Value::tuple({Value::string(s), Value::string(""), Value::string("")});
  }
  return Value::tuple({Value::string(s.substr(0, at)), Value::string(sep), Value::string(s.substr(at + sep.size()))});
}
Result<Value> m_partition(const std::string& s, const CallArgs& a) { return partition_method(s, a, false); }
Result<Value> m_rpartition(const std::string& s, const CallArgs& a) { return partition_method(s, a, true); }

Result<Value> m_isspace(const std::string& s, const CallArgs& a) {
  NB_RETURN_IF_ERROR(check_no_args(a, "isspace"));
  std::u32string cps = utf8_decode(s);
  return Value::boolean(!cps.empty() && std::all_of(cps.begin(), cps.end(), py_isspace));
}

// isdigit() for ASCII text; other scripts' digits would need Unicode tables.
Result<Value> m_isdigit(const std::string& s, const CallArgs& a) {
  NB_RETURN_IF_ERROR(check_no_args(a, "isdigit"));
  for (unsigned char c : s)
    if (c >= 0x80) return unsupported("str.isdigit() on non-ASCII text is not supported");
  return Value::boolean(!s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }));
}

struct StrMethodEntry {
  const char* name;
  StrFn fn;
};
const StrMethodEntry kStrMethods[] = {
    {"startswith", m_startswith}, {"endswith", m_endswith},       {"strip", m_strip},
    {"lstrip", m_lstrip},         {"rstrip", m_rstrip},           {"split", m_split},
    {"rsplit", m_rsplit},         {"splitlines", m_splitlines},   {"replace", m_replace},
    {"find", m_find},             {"rfind", m_rfind},             {"index", m_index},
    {"rindex", m_rindex},         {"count", m_count},             {"upper", m_upper},
    {"lower", m_lower},           {"title", m_title},             {"capitalize", m_capitalize},
    {"join", m_join},             {"removeprefix", m_removeprefix}, {"removesuffix", m_removesuffix},
    {"partition", m_partition},   {"rpartition", m_rpartition},   {"isspace", m_isspace},
    {"isdigit", m_isdigit},
};

// Other attributes Python's str has: calling one is a clear "unsupported" error.
const char* const kOtherStrMethods[] = {
    "casefold", "center",  "encode",    "expandtabs", "format",   "format_map", "isalnum",
    "isalpha",  "isascii", "isdecimal", "isidentifier", "islower", "isnumeric", "isprintable",
    "istitle",  "isupper", "ljust",     "maketrans",  "rjust",    "swapcase",   "translate", "zfill"};

Value unsupported_method(const std::string& type, const std::string& name) {
  return Value::callable(type + "." + name, [type, name](const CallArgs&) -> Result<Value> {
    return unsupported(strformat("unsupported method %s.%s()", type.c_str(), name.c_str()));
  });
}

Value unsafe(const std::string& type, const std::string& name) {
  return Value::undefined(strformat("access to attribute '%s' of '%s' object is unsafe.", name.c_str(), type.c_str()));
}

std::optional<Value> string_method(const std::string& self, const std::string& name) {
  for (const auto& m : kStrMethods) {
    if (name == m.name) {
      StrFn fn = m.fn;
      return Value::callable("str." + name, [self, fn](const CallArgs& a) { return fn(self, a); });
    }
  }
  for (const char* other : kOtherStrMethods)
    if (name == other) return unsupported_method("str", name);
  return std::nullopt;
}

std::optional<Value> dict_method(const Value& self, const std::string& name) {
  if (name == "get") {
    return Value::callable("dict.get", [self](const CallArgs& a) -> Result<Value> {
      NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, "get", {"key", "default"}, 1));
      const Value* v = b.get(0).is_string() ? self.as_dict().find(b.get(0).as_string()) : nullptr;
      return v ? *v : b.get_or(1, Value::none());
    });
  }
  if (name == "items" || name == "keys" || name == "values") {
    return Value::callable("dict." + name, [self, name](const CallArgs& a) -> Result<Value> {
      if (!a.args.empty() || !a.kwargs.empty()) return invalid_argument(name + "() takes no arguments");
      ValueList out;
      for (const auto& [k, v] : self.as_dict().items()) {
        if (name == "items") out.push_back(Value::tuple({Value::string(k), v}));
        else out.push_back(name == "keys" ? Value::string(k) : v);
      }
      return Value::list(std::move(out));
    });
  }
  if (name == "copy") return Value::callable("dict.copy", [self](const CallArgs&) -> Result<Value> { return self; });
  if (name == "clear" || name == "pop" || name == "popitem" || name == "setdefault" || name == "update")
    return unsafe("dict", name);
  if (name == "fromkeys") return unsupported_method("dict", name);
  return std::nullopt;
}

std::optional<Value> list_method(const Value& self, const std::string& name) {
  bool is_list = self.kind() == Kind::kList;
  std::string type = is_list ? "list" : "tuple";
  if (name == "index" || name == "count") {
    return Value::callable(type + "." + name, [self, name](const CallArgs& a) -> Result<Value> {
      NB_ASSIGN_OR_RETURN(BoundArgs b, BoundArgs::bind(a, name, {"value"}, 1));
      int64_t n = 0;
      const ValueList& items = self.as_list();
      for (size_t i = 0; i < items.size(); ++i) {
        if (!py_equal(items[i], b.get(0))) continue;
        if (name == "index") return Value::integer(static_cast<int64_t>(i));
        ++n;
      }
      if (name == "index") return invalid_argument(py_repr(b.get(0)) + " is not in list");
      return Value::integer(n);
    });
  }
  if (!is_list) return std::nullopt;
  if (name == "copy") return Value::callable("list.copy", [self](const CallArgs&) -> Result<Value> { return self; });
  static const char* const kMutating[] = {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"};
  for (const char* m : kMutating)
    if (name == m) return unsafe("list", name);
  return std::nullopt;
}

}  // namespace

std::optional<Value> find_method(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Kind::kString: return string_method(obj.as_string(), name);
    case Kind::kDict: return dict_method(obj, name);
    case Kind::kList:
    case Kind::kTuple: return list_method(obj, name);
    default: return std::nullopt;
  }
}

std::string py_strip(std::string_view s, const Value& chars, bool left, bool right) {
  std::u32string cps = utf8_decode(s);
  std::u32string set = chars.is_string() ? utf8_decode(chars.as_string()) : U"";
  auto strip_it = [&](char32_t c) { return chars.is_string() ? set.find(c) != std::u32string::npos : py_isspace(c); };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip_it(cps[b])) ++b;
  if (right)
    while (e > b && strip_it(cps[e - 1])) --e;
  return utf8_encode(std::u32string_view(cps).substr(b, e - b));
}

std::string py_replace(const std::string& s, const std::string& old, const std::string& with, int64_t count) {
  std::string out;
  if (old.empty()) {  // Python inserts `with` before every character and at the end
    std::u32string cps = utf8_decode(s);
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count != 0) {
        out += with;
        --count;
      }
      if (i < cps.size()) append_utf8(out, cps[i]);
    }
    return out;
  }
  size_t start = 0;
  for (size_t at; count != 0 && (at = s.find(old, start)) != std::string::npos; --count) {
    out.append(s, start, at - start);
    out += with;
    start = at + old.size();
  }
  out.append(s, start, std::string::npos);
  return out;
}

std::vector<std::string> py_splitlines(const std::string& s, bool keepends) {
  std::u32string cps = utf8_decode(s);
  std::vector<std::string> out;
  auto is_break = [](char32_t c) {
    return c == U'\n' || c == U'\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
           c == 0x85 || c == 0x2028 || c == 0x2029;
  };
  size_t i = 0, n = cps.size();
  while (i < n) {
    size_t j = i;
    while (j < n && !is_break(cps[j])) ++j;
    size_t eol = j;
    if (j < n) {
      eol = (cps[j] == U'\r' && j + 1 < n && cps[j + 1] == U'\n') ? j + 2 : j + 1;
    }
    out.push_back(utf8_encode(std::u32string_view(cps).substr(i, (keepends ? eol : j) - i)));
    i = eol;
  }
  return out;
}

}  // namespace nb::jinja
