#include "io/json_util.h"

#include <cstdint>
#include <limits>

namespace nb {

Result<Json> parse_json(std::string_view text, const std::string& source) {
  // nlohmann reports the position only through its exception; it never escapes this function.
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::exception& e) {
    return format_error(strformat("%s: invalid JSON: %s", source.c_str(), e.what()));
  }
}

std::string describe_json(const Json& j) {
  std::string text;
  switch (j.type()) {
    case Json::value_t::object: return "an object";
    case Json::value_t::array: return "an array";
    case Json::value_t::null: return "null";
    case Json::value_t::boolean: return j.get<bool>() ? "true" : "false";
    case Json::value_t::string: text = "string "; break;
    default: text = "number "; break;
  }
  std::string value = j.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (value.size() > 64) value = value.substr(0, 61) + "...";
  return text + value;
}

Result<JsonObject> JsonObject::make(const Json& j, std::string source, std::string path) {
  if (!j.is_object()) {
    std::string what = path.empty() ? std::string("top level") : "field '" + path + "'";
    return format_error(strformat("%s: %s: expected a JSON object, got %s", source.c_str(), what.c_str(),
                                  describe_json(j).c_str()));
  }
  JsonObject o;
  o.json_ = &j;
  o.source_ = std::move(source);
  o.path_ = std::move(path);
  return o;
}

const Json* JsonObject::get(std::string_view key) const {
  auto it = json_->find(key);
  if (it == json_->end() || it->is_null()) return nullptr;
  return &*it;
}

bool JsonObject::has(std::string_view key) const { return get(key) != nullptr; }

std::string JsonObject::where(std::string_view key) const {
  std::string full = path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  return strformat("%s: field '%s'", source_.c_str(), full.c_str());
}

Status JsonObject::type_error(std::string_view key, const char* expected, const Json& got) const {
  return format_error(strformat("%s: expected %s, got %s", where(key).c_str(), expected, describe_json(got).c_str()));
}

Status JsonObject::missing(std::string_view key) const {
  return format_error(strformat("%s: missing (required)", where(key).c_str()));
}

namespace {
// Integers only: 4096.0 is rejected, as are values beyond int64.
bool as_int64(const Json& v, int64_t* out) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
    return true;
  }
  return false;
}
}  // namespace

Result<int64_t> JsonObject::int_at(std::string_view key) const {
  const Json* v = get(key);
  if (!v) return missing(key);
  int64_t out = 0;
  if (!as_int64(*v, &out)) return type_error(key, "an integer", *v);
  return out;
}

Result<int64_t> JsonObject::int_or(std::string_view key, int64_t fallback) const {
  return has(key) ? int_at(key) : Result<int64_t>(fallback);
}

Result<double> JsonObject::number_at(std::string_view key) const {
  const Json* v = get(key);
  if (!v) return missing(key);
  if (!v->is_number()) return type_error(key, "a number", *v);
  return v->get<double>();
}

Result<double> JsonObject::number_or(std::string_view key, double fallback) const {
  return has(key) ? number_at(key) : Result<double>(fallback);
}

Result<bool> JsonObject::bool_or(std::string_view key, bool fallback) const {
  const Json* v = get(key);
  if (!v) return fallback;
  if (!v->is_boolean()) return type_error(key, "true or false", *v);
  return v->get<bool>();
}

Result<std::string> JsonObject::string_at(std::string_view key) const {
  const Json* v = get(key);
  if (!v) return missing(key);
  if (!v->is_string()) return type_error(key, "a string", *v);
  return v->get<std::string>();
}

Result<std::string> JsonObject::string_or(std::string_view key, std::string fallback) const {
  return has(key) ? string_at(key) : Result<std::string>(std::move(fallback));
}

Result<std::vector<int64_t>> JsonObject::int_or_int_list(std::string_view key) const {
  const Json* v = get(key);
  if (!v) return std::vector<int64_t>{};
  int64_t one = 0;
  if (as_int64(*v, &one)) return std::vector<int64_t>{one};
  if (!v->is_array()) return type_error(key, "an integer or a list of integers", *v);
  return int_list_or_empty(key);
}

Result<std::vector<int64_t>> JsonObject::int_list_or_empty(std::string_view key) const {
  const Json* v = get(key);
  std::vector<int64_t> out;
  if (!v) return out;
  if (!v->is_array()) return type_error(key, "a list of integers", *v);
  for (size_t i = 0; i < v->size(); ++i) {
    int64_t x = 0;
    if (!as_int64((*v)[i], &x))
      return format_error(strformat("%s[%zu]: expected an integer, got %s", where(key).c_str(), i,
                                    describe_json((*v)[i]).c_str()));
    out.push_back(x);
  }
  return out;
}

Result<std::vector<std::string>> JsonObject::string_list_or_empty(std::string_view key) const {
  const Json* v = get(key);
  std::vector<std::string> out;
  if (!v) return out;
  if (!v->is_array()) return type_error(key, "a list of strings", *v);
  for (size_t i = 0; i < v->size(); ++i) {
    if (!(*v)[i].is_string())
      return format_error(strformat("%s[%zu]: expected a string, got %s", where(key).c_str(), i,
                                    describe_json((*v)[i]).c_str()));
    out.push_back((*v)[i].get<std::string>());
  }
  return out;
}

Result<JsonObject> JsonObject::object_at(std::string_view key) const {
  const Json* v = get(key);
  if (!v) return missing(key);
  std::string full = path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  return make(*v, source_, full);
}

}  // namespace nb
