// The stages of a tokenizer.json pipeline around the model, with Hugging Face tokenizers 0.23
// semantics: normalizers, pre-tokenizers, decoders and the post-processor template.
//
// Supported (anything else is an `unsupported` error naming the type and its JSON path):
//   normalizer:    Sequence, NFC, NFD, NFKC, NFKD, Prepend, Replace, Strip
//   pre_tokenizer: Sequence, Split, ByteLevel (must come last), Metaspace
//   decoder:       Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip
//   post_processor: TemplateProcessing, ByteLevel, Sequence, BertProcessing, RobertaProcessing
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "io/tokenizer/regex.h"

namespace nb::tok {

using Json = nlohmann::json;

// Where a JSON value sits, for messages: "tokenizer.json: pre_tokenizer.pretokenizers[1]".
struct JsonPath {
  std::string source;
  std::string path;
  JsonPath operator/(std::string_view key) const { return {source, path.empty() ? std::string(key) : path + "." + std::string(key)}; }
  JsonPath operator[](size_t i) const { return {source, path + strformat("[%zu]", i)}; }
  std::string str() const { return source + ": " + path; }
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual Status apply(std::string* text) const = 0;
};

// A pre-token: a view into the normalized text or into owned storage.
struct Piece {
  std::string_view text;
  bool at_origin = false;  // starts at offset 0 of the original text (Metaspace prepend_scheme "first")
};
using PieceStore = std::deque<std::string>;  // owns rewritten pieces; deque keeps views valid

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual Status apply(std::vector<Piece>* pieces, PieceStore* store) const = 0;
};

// Decoding state shared by the decoder chain.
struct DecodeState {
  bool incomplete = false;  // output ends inside a byte sequence that later tokens may complete
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual Status apply(std::vector<std::string>* tokens, DecodeState* st) const = 0;
};

// Post-processing as templates applied in order: each wraps the current ids.
struct TemplateItem {
  bool is_sequence = false;    // $A
  std::vector<int32_t> ids;    // a special token's ids
};
using Template = std::vector<TemplateItem>;

struct Pipeline {
  std::unique_ptr<Normalizer> normalizer;        // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer;   // may be null
  std::unique_ptr<Decoder> decoder;              // may be null: tokens joined with " "
  std::vector<Template> post;                    // empty: no special tokens added
  bool byte_level = false;                       // the model works on raw bytes (ByteLevel pre-tokenizer)
};

// `j` may be null (absent stage). The post-processor needs token ids of its special tokens.
Result<std::unique_ptr<Normalizer>> parse_normalizer(const Json& j, const JsonPath& at);
Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const Json& j, const JsonPath& at, bool* byte_level);
Result<std::unique_ptr<Decoder>> parse_decoder(const Json& j, const JsonPath& at);
Result<std::vector<Template>> parse_post_processor(const Json& j, const JsonPath& at);

// JSON field access with messages naming the path, the expected type and what was found.
const Json* field(const Json& obj, std::string_view key);  // nullptr when absent or null
Result<std::string> string_field(const Json& obj, std::string_view key, const JsonPath& at);
Result<bool> bool_field(const Json& obj, std::string_view key, const JsonPath& at, bool fallback);
// The "pattern" field: {"String": literal} or {"Regex": pattern}.
Result<Regex> parse_pattern(const Json& obj, const JsonPath& at);
// Replaces every match of `re` in `text` by `content`.
Status replace_all(const Regex& re, const std::string& content, std::string* text);

}  // namespace nb::tok
