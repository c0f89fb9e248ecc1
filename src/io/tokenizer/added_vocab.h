// Added tokens (tokenizer.json "added_tokens"): matched atomically in the text before
// normalization and pre-tokenization, as Hugging Face tokenizers 0.23 does
// (tokenizer/added_vocabulary.rs):
//   - leftmost-longest, non-overlapping matching over all added tokens of one trie;
//   - `normalized: false` tokens are matched in the raw text, `normalized: true` ones in each
//     normalized piece (against the normalized form of their content);
//   - a match rejected by `single_word`, or a special token while special tokens are not parsed
//     (split_special_tokens), is skipped *after* it was matched: its span stays plain text and
//     no shorter/overlapping token is tried inside it;
//   - `lstrip` / `rstrip` extend the match over White_Space on that side.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace nb::tok {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
  std::string normalized_content;  // content after the normalizer (== content when not normalized)
};

// A piece of text: either plain text [begin, end) or an added token.
struct Segment {
  size_t begin = 0, end = 0;
  int32_t token_id = -1;
};

class AddedVocab {
 public:
  // Tokens with an empty content are ignored (as in HF).
  void build(std::vector<AddedToken> tokens);

  // Splits `text` into plain-text and added-token segments covering it (empty text gives none).
  // `normalized` selects the trie of normalized tokens; with parse_special false, special
  // tokens are not recognized.
  void split(std::string_view text, bool normalized, bool parse_special, std::vector<Segment>* out) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }
  const AddedToken* find_by_id(int32_t id) const;
  const AddedToken* find_by_content(std::string_view content) const;
  bool empty() const { return tokens_.empty(); }

 private:
  struct Trie {
    struct Node {
      std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
      int32_t token = -1;                                 // index in tokens_
    };
    std::vector<Node> nodes;
    int32_t root_child[256];
    void build(const std::vector<AddedToken>& tokens, bool normalized);
    // Longest token starting at text[pos]: sets *len and returns the token index, or -1.
    int32_t longest_at(std::string_view text, size_t pos, size_t* len) const;
  };
  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, int32_t> by_id_;  // id -> index in tokens_
  Trie raw_, norm_;
};

}  // namespace nb::tok
