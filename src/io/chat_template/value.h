// The values a chat template computes with, modelled on the Python objects jinja2 sees when
// transformers renders a template: None, bool, int, float, str, list, tuple, dict (insertion
// ordered, string keys), jinja2's Undefined and namespace, and callables (globals, bound string /
// dict / list methods, macros). The helpers give them Python semantics: truthiness, str(),
// repr(), ==, ordering and json.dumps.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace nb::jinja {

class Value;
using ValueList = std::vector<Value>;

// A Python dict with string keys; keeps insertion order.
class Dict {
 public:
  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value value);
  size_t size() const { return items_.size(); }
  const std::vector<std::pair<std::string, Value>>& items() const { return items_; }

 private:
  std::vector<std::pair<std::string, Value>> items_;
};

// Positional and keyword arguments of a call, already evaluated.
struct CallArgs {
  ValueList args;
  std::vector<std::pair<std::string, Value>> kwargs;
};

struct Callable {
  std::string name;
  std::function<Result<Value>(const CallArgs&)> fn;
  // Errors of these callables already say where they happened (macros) or must reach the caller
  // verbatim (raise_exception); the renderer does not prefix them with the call's position.
  bool verbatim_errors = false;
};

enum class Kind : uint8_t { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kTuple, kDict, kNamespace, kCallable };

class Value {
 public:
  // Undefined, with the message jinja2 would raise when it is used ("'x' is undefined").
  Value() = default;
  static Value undefined(std::string message);
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double f);
  static Value string(std::string s);
  static Value list(ValueList items);
  static Value tuple(ValueList items);
  static Value dict(Dict d);
  // A jinja2 namespace(): the one mutable object ({% set ns.x = ... %}). read_only marks `loop`.
  static Value ns(std::shared_ptr<Dict> attrs, bool read_only = false);
  static Value callable(std::string name, std::function<Result<Value>(const CallArgs&)> fn, bool verbatim_errors = false);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  // int, bool or float (Python's numbers.Number).
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kBool || kind_ == Kind::kFloat; }
  bool is_sequence() const { return kind_ == Kind::kList || kind_ == Kind::kTuple; }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }
  bool is_callable() const { return kind_ == Kind::kCallable; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::kBool ? (b_ ? 1 : 0) : i_; }  // int or bool
  double as_float() const { return kind_ == Kind::kFloat ? f_ : static_cast<double>(as_int()); }
  const std::string& as_string() const { return s_; }
  const std::string& undefined_message() const { return s_; }
  const ValueList& as_list() const { return *list_; }  // list or tuple
  const Dict& as_dict() const { return *dict_; }
  Dict& ns_attrs() const { return *ns_; }
  bool ns_read_only() const { return b_; }
  const Callable& as_callable() const { return *fn_; }

 private:
  Kind kind_ = Kind::kUndefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<const Dict> dict_;
  std::shared_ptr<Dict> ns_;
  std::shared_ptr<const Callable> fn_;
};

// Python semantics. Errors carry Python's message ("unsupported operand type(s) ..."); the
// renderer adds the template position.
bool truthy(const Value& v);
std::string type_name(const Value& v);  // "str", "NoneType", "dict", ...
std::string py_str(const Value& v);     // str(v); Undefined -> ""
std::string py_repr(const Value& v);
std::string py_float_repr(double f);    // repr(float): shortest round trip, '1e+16', '1.0'
bool py_equal(const Value& a, const Value& b);
// -1, 0 or 1; TypeError for types Python does not order ('<' between str and int).
Result<int> py_compare(const Value& a, const Value& b, const char* op);
Result<bool> py_contains(const Value& container, const Value& item);  // `item in container`

struct JsonDumpOptions {
  bool ensure_ascii = false;
  bool has_indent = false;
  std::string indent;
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
};
// json.dumps(v, ...) exactly as Python writes it.
Result<std::string> py_json_dumps(const Value& v, const JsonDumpOptions& options);

// JSON (the request / config) to Values. ordered_json keeps the caller's key order, which
// `tojson` reproduces; plain json's keys arrive sorted.
Value value_from_json(const nlohmann::ordered_json& j);
Value value_from_json(const nlohmann::json& j);

}  // namespace nb::jinja
