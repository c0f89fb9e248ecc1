// Hugging Face tokenizer.json tokenizers (BPE models), token for token identical to the
// `tokenizers` library 0.23 on the supported pipelines (see pipeline.h): byte-level BPE
// (Qwen2/2.5/3, Llama-3, DeepSeek-V3) and SentencePiece-style BPE with byte fallback
// (Mistral/Mixtral, Llama-2 style).
//
// Encoding: added tokens are matched atomically first (added_vocab.h), each remaining piece is
// normalized, pre-tokenized and run through BPE, then the post-processor adds special tokens.
//
// BOS/EOS rule: the tokenizer.json post-processor decides, except when tokenizer_config.json
// names a Llama tokenizer class (LlamaTokenizer, LlamaTokenizerFast, CodeLlamaTokenizer[Fast]):
// then the post-processor is rebuilt as [BOS if add_bos_token (default true)] $A
// [EOS if add_eos_token (default false)], as transformers 4.x LlamaTokenizerFast does. This is
// how DeepSeek-V3 (add_bos_token: true, ByteLevel post-processor) gets its BOS.
// (transformers 5.x loads DeepSeek-V3 without BOS and re-interprets the Mistral file with a
// non-legacy Metaspace; nibble follows the files and the 4.x rule.)
//
// Thread safety: a Tokenizer is immutable after loading; encode/decode may run concurrently.
// Copies share the loaded tables.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace nb {

namespace tok {
struct TokenizerImpl;
}

class Tokenizer {
 public:
  // Reads MODEL_DIR/tokenizer.json, MODEL_DIR/tokenizer_config.json (optional) and the
  // eos_token_id of MODEL_DIR/generation_config.json (optional).
  static Result<Tokenizer> load(const std::string& model_dir);
  // From file contents; `config_text` may be empty. `source` names the JSON in messages.
  static Result<Tokenizer> from_json(std::string_view tokenizer_json, std::string_view config_text = {},
                                     const std::string& source = "tokenizer.json");

  // add_special_tokens: apply the post-processor (BOS...). parse_special: recognize special
  // added tokens in the text; when false they are ordinary text (HF split_special_tokens=True),
  // while non-special added tokens (e.g. Qwen's <think>) are still matched.
  // Invalid UTF-8 in `text` is an error naming the byte offset.
  Result<std::vector<int32_t>> encode(std::string_view text, bool add_special_tokens = true, bool parse_special = true) const;
  // Ids outside [0, vocab_size()) or without a token are an error. Invalid byte sequences
  // decode to U+FFFD as in HF.
  Result<std::string> decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // 1 + the largest id of the model vocabulary and the added tokens (Qwen3: 151669).
  int32_t vocab_size() const;
  int32_t token_to_id(std::string_view token) const;  // -1 when unknown; added tokens first
  std::optional<std::string> id_to_token(int32_t id) const;  // as written in tokenizer.json
  int32_t bos_id() const;                            // tokenizer_config bos_token, -1 if none
  // tokenizer_config eos_token, then generation_config.json eos_token_id(s), without repeats.
  const std::vector<int32_t>& eos_ids() const;
  bool is_special(int32_t id) const;  // an added token with "special": true

 private:
  friend class StreamDecoder;
  Tokenizer() = default;
  std::shared_ptr<const tok::TokenizerImpl> impl_;
};

// Incremental detokenization for streaming: feed ids one at a time, get the text that became
// final. Never returns part of a UTF-8 character: byte-level text ending inside a multi-byte
// sequence is held back until the sequence completes, and a run of byte-fallback tokens
// (<0xE4><0xBD><0xA0>...) until the run ends (the next non-byte token), because HF decodes a
// run that turns out invalid as one U+FFFD per byte. flush() returns what is still held at the
// end of the stream. The concatenation of everything returned equals decode() of the whole
// sequence, for any ids. Cost per step: one decode of the last step's tokens plus the new ones.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);
  Result<std::string> step(int32_t id);
  Result<std::string> flush();  // the held-back rest at the end of the stream; then reset()
  void reset();

 private:
  std::shared_ptr<const tok::TokenizerImpl> impl_;
  bool skip_special_;
  std::vector<int32_t> ids_;  // context tokens + tokens not yet emitted
  std::string prefix_;        // decode of ids_[0, read_index_)
  size_t read_index_ = 0;     // ids_ before this were emitted (they stay as context)
};

}  // namespace nb
