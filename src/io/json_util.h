// Typed, error-reporting access to JSON objects (config.json, index files, quantization configs).
//
// Every error names the source, the field path, the expected type and what was found:
//   "config.json: field 'rope_scaling.factor': expected a number, got string \"4\""
// An absent key and a JSON null are treated alike ("not given"), as transformers does for
// optional fields such as `sliding_window: null`.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace nb {

using Json = nlohmann::json;

// Parses JSON text; a syntax error names `source` and nlohmann's position ("at line 3, column 7").
Result<Json> parse_json(std::string_view text, const std::string& source);

// "string \"abc\"", "number 4.5", "array", ... for messages. Long values are shortened.
std::string describe_json(const Json& j);

// A JSON object plus where it came from. Holds a pointer: the Json must outlive it.
class JsonObject {
 public:
  // Fails when `j` is not an object. `path` is the dotted prefix of its fields ("" at the root).
  static Result<JsonObject> make(const Json& j, std::string source, std::string path = "");

  bool has(std::string_view key) const;  // present and not null
  const Json* get(std::string_view key) const;  // nullptr when absent or null
  // "config.json: field 'rope_scaling.factor'"
  std::string where(std::string_view key) const;
  Status type_error(std::string_view key, const char* expected, const Json& got) const;
  Status missing(std::string_view key) const;

  Result<int64_t> int_at(std::string_view key) const;
  Result<int64_t> int_or(std::string_view key, int64_t fallback) const;
  Result<double> number_at(std::string_view key) const;  // integers accepted
  Result<double> number_or(std::string_view key, double fallback) const;
  Result<bool> bool_or(std::string_view key, bool fallback) const;
  Result<std::string> string_at(std::string_view key) const;
  Result<std::string> string_or(std::string_view key, std::string fallback) const;
  // An integer or a list of integers ("eos_token_id": 2 or [1, 2]); absent/null → empty.
  Result<std::vector<int64_t>> int_or_int_list(std::string_view key) const;
  Result<std::vector<int64_t>> int_list_or_empty(std::string_view key) const;
  Result<std::vector<std::string>> string_list_or_empty(std::string_view key) const;
  // A nested object; its errors carry the dotted path.
  Result<JsonObject> object_at(std::string_view key) const;

  const Json& json() const { return *json_; }
  const std::string& source() const { return source_; }

 private:
  const Json* json_ = nullptr;
  std::string source_;
  std::string path_;
};

}  // namespace nb
