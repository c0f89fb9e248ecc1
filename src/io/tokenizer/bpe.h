// The BPE model of tokenizer.json (`"model": {"type": "BPE", ...}`), with the semantics of
// Hugging Face tokenizers 0.23 (models/bpe): ignore_merges, byte_fallback, unk_token + fuse_unk,
// continuing_subword_prefix / end_of_word_suffix, merges as "a b" strings or [a, b] pairs.
//
// Byte-level tokenizers (GPT-2 style) store their vocabulary in the byte-to-unicode alphabet.
// nibble maps it back to raw bytes once at load time (`byte_level`), so encoding works on the
// UTF-8 bytes of the text directly and never builds the mapped string.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"
#include "io/tokenizer/flat_map.h"

namespace nb::tok {

struct BpeSpec {
  std::vector<std::pair<std::string, int64_t>> vocab;  // token -> id, in file order
  // Merges in rank order: pairs, or "a b" lines (legacy) split at load.
  std::vector<std::pair<std::string, std::string>> merges;
  std::optional<std::string> unk_token;
  std::optional<std::string> continuing_subword_prefix;
  std::optional<std::string> end_of_word_suffix;
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
};

class BpeModel {
 public:
  // `source` names the file in messages ("tokenizer.json").
  static Result<BpeModel> build(BpeSpec spec, bool byte_level, const std::string& source);

  // Appends the ids of one pre-token (raw UTF-8 bytes in byte-level mode).
  Status tokenize(std::string_view word, std::vector<int32_t>* out) const;

  int32_t token_to_id(std::string_view token) const { return vocab_.find(token); }
  // The token string as written in the file; nullopt for ids the model does not have.
  std::optional<std::string_view> id_to_token(int32_t id) const;
  int32_t id_bound() const { return static_cast<int32_t>(id_spans_.size()); }  // max id + 1
  size_t vocab_entries() const { return vocab_.size(); }                        // distinct tokens

 private:
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // neighbour indices, -1 at the ends
    int32_t len;         // 0 once merged into its left neighbour
  };
  Status bpe_word(std::string_view word, std::vector<int32_t>* out) const;  // cached
  Status initial_symbols(std::string_view word, std::vector<Symbol>* syms) const;
  void merge_all(std::vector<Symbol>* syms) const;
  int32_t find_unit(std::string_view s) const { return byte_level_ ? raw_vocab_.find(s) : vocab_.find(s); }

  StringIdMap vocab_;      // token as in the file -> id
  StringIdMap raw_vocab_;  // byte-level only: token as raw bytes -> id
  std::string id_arena_;
  std::vector<std::pair<uint32_t, uint32_t>> id_spans_;  // id -> (offset, length); length ~0u = no token
  PairMap merges_;
  int32_t byte_ids_[256];  // byte-level fast path: id of each single byte, -1 when absent
  bool byte_level_ = false;
  bool simple_units_ = false;  // no prefix/suffix: units map straight to ids
  BpeSpec opts_;               // flags and prefix/suffix (vocab and merges moved out)
  std::string raw_prefix_, raw_suffix_;  // prefix/suffix in the encoding alphabet
  int32_t unk_id_ = -1;
  // SentencePiece-style vocabularies never merge across the start of a "▁"-word: when no token
  // has a "▁" after another character, a long word is tokenized one "▁"-segment at a time
  // (same result, and the per-word cache applies). Empty when the property does not hold.
  std::string segment_marker_;
  uint64_t cache_id_ = 0;  // key of this model's per-thread word cache
};

}  // namespace nb::tok
