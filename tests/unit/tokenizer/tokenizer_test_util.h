// Shared helpers of the tokenizer tests: where the real tokenizers and the reference outputs
// (tools/tokref/make_refs.py, Hugging Face tokenizers) live.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/mmap.h"
#include "io/tokenizer/tokenizer.h"

namespace nb::test {

using Json = nlohmann::json;

inline std::string tokenizer_data_dir() { return std::string(NIBBLE_SOURCE_DIR) + "/tests/data/tokenizers"; }

// Qwen3 and Mistral are committed (Apache-2.0); Llama-3 and DeepSeek-V3 may not be, and are
// read from the shared data folder next to the repository.
inline std::string tokenizer_dir(const std::string& name) {
  if (name == "qwen3" || name == "mistral") return tokenizer_data_dir() + "/" + name;
  return std::string(NIBBLE_SOURCE_DIR) + "/../shared/data/tokenizers/" + name;
}

inline Json read_json(const std::string& path) {
  auto text = read_text_file(path);
  EXPECT_TRUE(text.is_ok()) << text.status().to_string();
  return text.is_ok() ? Json::parse(*text) : Json();
}

// Loads each real tokenizer once per test binary. nullptr (and a skip message) when absent.
inline const Tokenizer* real_tokenizer(const std::string& name, std::string* skip_reason) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> cache;
  auto it = cache.find(name);
  if (it != cache.end()) {
    if (!it->second) *skip_reason = name + ": tokenizer files not found at " + tokenizer_dir(name);
    return it->second.get();
  }
  std::unique_ptr<Tokenizer> tok;
  if (file_exists(tokenizer_dir(name) + "/tokenizer.json")) {
    auto loaded = Tokenizer::load(tokenizer_dir(name));
    EXPECT_TRUE(loaded.is_ok()) << loaded.status().to_string();
    if (loaded.is_ok()) tok = std::make_unique<Tokenizer>(std::move(loaded).value());
  }
  if (!tok) *skip_reason = name + ": tokenizer files not found at " + tokenizer_dir(name);
  return (cache[name] = std::move(tok)).get();
}

inline std::vector<int32_t> ids_of(const Json& j) { return j.get<std::vector<int32_t>>(); }

}  // namespace nb::test
