// Reads tokenizer.json in one SAX pass. `model.vocab` and `model.merges` (99% of the file) go
// straight into flat vectors; everything else becomes a small nlohmann DOM. Building the full
// DOM of the Qwen3 file costs ~300 ms (one std::map node per token, one array per merge pair);
// this path costs the lexing only.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "io/tokenizer/bpe.h"

namespace nb::tok {

struct TokenizerJson {
  nlohmann::json doc;  // the whole file except model.vocab and model.merges
  BpeSpec bpe;         // vocab and merges (the remaining model fields are read from doc)
  bool has_vocab = false;
  bool has_merges = false;
};

// `source` names the file in messages ("/path/tokenizer.json").
Result<TokenizerJson> read_tokenizer_json(std::string_view text, const std::string& source);

}  // namespace nb::tok
