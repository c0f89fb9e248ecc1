#include "io/tokenizer/added_vocab.h"

#include <unicode/uchar.h>

#include <algorithm>

#include "io/tokenizer/unicode.h"

namespace nb::tok {
namespace {

// Rust regex \w (Unicode): Alphabetic, marks, decimal digits, connector punctuation, Join_Control.
bool is_word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  if (c == 0x200C || c == 0x200D) return true;
  if (u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_ALPHABETIC)) return true;
  int8_t t = u_charType(static_cast<UChar32>(c));
  return t == U_NON_SPACING_MARK || t == U_ENCLOSING_MARK || t == U_COMBINING_SPACING_MARK || t == U_DECIMAL_DIGIT_NUMBER ||
         t == U_CONNECTOR_PUNCTUATION;
}

// Start of the code point that ends at text[end - 1].
size_t prev_char_start(std::string_view text, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<uint8_t>(text[i]) & 0xC0) == 0x80) --i;
  return i;
}

bool ends_with_word(std::string_view text, size_t end) {
  if (end == 0) return false;
  size_t i = prev_char_start(text, end);
  return is_word_char(utf8_next(text, i));
}

bool starts_with_word(std::string_view text, size_t begin) {
  if (begin >= text.size()) return false;
  return is_word_char(utf8_next(text, begin));
}

}  // namespace

void AddedVocab::Trie::build(const std::vector<AddedToken>& tokens, bool normalized) {
  nodes.assign(1, Node{});
  std::fill(std::begin(root_child), std::end(root_child), -1);
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t].normalized != normalized) continue;
    const std::string& key = normalized ? tokens[t].normalized_content : tokens[t].content;
    if (key.empty()) continue;
    int32_t node = 0;
    for (unsigned char b : key) {
      auto& ch = nodes[node].children;
      auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(b, int32_t{-1}));
      if (it != ch.end() && it->first == b) {
        node = it->second;
        continue;
      }
      int32_t child = static_cast<int32_t>(nodes.size());
      ch.insert(it, {b, child});
      if (node == 0) root_child[b] = child;
      nodes.emplace_back();
      node = child;
    }
    nodes[node].token = static_cast<int32_t>(t);  // a repeated content keeps the last token
  }
}

int32_t AddedVocab::Trie::longest_at(std::string_view text, size_t pos, size_t* len) const {
  int32_t node = root_child[static_cast<uint8_t>(text[pos])];
  int32_t best = -1;
  size_t i = pos + 1;
  while (node >= 0) {
    if (nodes[node].token >= 0) {
      best = nodes[node].token;
      *len = i - pos;
    }
    if (i >= text.size()) break;
    const auto& ch = nodes[node].children;
    const uint8_t b = static_cast<uint8_t>(text[i]);
    auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(b, int32_t{-1}));
    node = (it != ch.end() && it->first == b) ? it->second : -1;
    ++i;
  }
  return best;
}

void AddedVocab::build(std::vector<AddedToken> tokens) {
  tokens_.clear();
  for (auto& t : tokens) {
    if (!t.content.empty()) tokens_.push_back(std::move(t));
  }
  by_id_.clear();
  for (size_t i = 0; i < tokens_.size(); ++i) by_id_[tokens_[i].id] = static_cast<int32_t>(i);
  raw_.build(tokens_, false);
  norm_.build(tokens_, true);
}

void AddedVocab::split(std::string_view text, bool normalized, bool parse_special, std::vector<Segment>* out) const {
  out->clear();
  const Trie& trie = normalized ? norm_ : raw_;
  size_t start_offset = 0;  // end of the last emitted segment
  size_t pos = 0;
  if (trie.nodes.size() <= 1) pos = text.size();  // no token in this trie
  while (pos < text.size()) {
    if (trie.root_child[static_cast<uint8_t>(text[pos])] < 0) {  // cheap skip: no token starts with this byte
      ++pos;
      continue;
    }
    size_t len = 0;
    int32_t t = trie.longest_at(text, pos, &len);
    if (t < 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // the matcher resumes after this match even when it is rejected below
    const AddedToken& tok = tokens_[t];
    if (tok.special && !parse_special) continue;
    if (tok.single_word && (ends_with_word(text, start) || starts_with_word(text, stop))) continue;
    if (tok.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t p = prev_char_start(text, s), q = p;
        if (!is_white_space(utf8_next(text, q))) break;
        s = p;
      }
      start = std::max(s, start_offset);  // spaces already taken by the previous match stay there
    }
    if (tok.rstrip) {
      // Matching still resumes at the end of the token itself, so a following token may start
      // inside the stripped spaces; HF then emits overlapping pieces, and so does this.
      while (stop < text.size()) {
        size_t q = stop;
        if (!is_white_space(utf8_next(text, q))) break;
        stop = q;
      }
    }
    if (start_offset < start) out->push_back({start_offset, start, -1});
    out->push_back({start, stop, tok.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) out->push_back({start_offset, text.size(), -1});
}

const AddedToken* AddedVocab::find_by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocab::find_by_content(std::string_view content) const {
  for (const auto& t : tokens_) {
    if (t.content == content) return &t;
  }
  return nullptr;
}

}  // namespace nb::tok
