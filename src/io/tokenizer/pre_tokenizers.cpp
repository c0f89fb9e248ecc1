// Pre-tokenizers of tokenizer.json: Sequence, Split, ByteLevel, Metaspace.
#include <algorithm>
#include <utility>

#include "io/tokenizer/pipeline.h"
#include "io/tokenizer/regex.h"
#include "io/tokenizer/unicode.h"

namespace nb::tok {
namespace {

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct Span {
  size_t begin, end;
  bool is_match;
};

// HF NormalizedString::split: the (offsets, is_match) cover of the text, merged by behaviour.
void split_by_matches(const Piece& piece, const std::vector<std::pair<size_t, size_t>>& matches, bool invert, Behavior behavior,
                      std::vector<Piece>* out) {
  const size_t n = piece.text.size();
  thread_local std::vector<Span> spans, acc;
  spans.clear();
  size_t prev = 0;
  for (auto [s, e] : matches) {
    if (prev != s) spans.push_back({prev, s, invert});
    spans.push_back({s, e, !invert});
    prev = e;
  }
  if (prev != n) spans.push_back({prev, n, invert});

  acc.clear();
  bool previous_match = false;
  switch (behavior) {
    case Behavior::kIsolated:
      acc = spans;
      break;
    case Behavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) acc.push_back(s);
      }
      break;
    case Behavior::kContiguous:
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !acc.empty()) acc.back().end = s.end;
        else acc.push_back(s);
        previous_match = s.is_match;
      }
      break;
    case Behavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !acc.empty()) acc.back().end = s.end;
        else acc.push_back(s);
        previous_match = s.is_match;
      }
      break;
    case Behavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !acc.empty()) acc.back().begin = it->begin;
        else acc.push_back(*it);
        previous_match = it->is_match;
      }
      std::reverse(acc.begin(), acc.end());
      break;
  }
  for (const Span& s : acc) {
    if (s.end > s.begin) out->push_back({piece.text.substr(s.begin, s.end - s.begin), piece.at_origin && s.begin == 0});
  }
}

class SequencePreTokenizer : public PreTokenizer {
 public:
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  Status apply(std::vector<Piece>* pieces, PieceStore* store) const override {
    for (const auto& s : steps) NB_RETURN_IF_ERROR(s->apply(pieces, store));
    return Status::ok();
  }
};

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(Regex re, Behavior b, bool invert) : re_(std::move(re)), behavior_(b), invert_(invert) {}
  Status apply(std::vector<Piece>* pieces, PieceStore*) const override {
    thread_local std::vector<Piece> out;
    thread_local std::vector<std::pair<size_t, size_t>> matches;
    out.clear();
    for (const Piece& p : *pieces) {
      NB_RETURN_IF_ERROR(re_.find_all(p.text, &matches));
      split_by_matches(p, matches, invert_, behavior_, &out);
    }
    pieces->swap(out);
    return Status::ok();
  }

 private:
  Regex re_;
  Behavior behavior_;
  bool invert_;
};

// The byte-to-unicode mapping itself is done by the model (BpeModel works on raw bytes); this
// stage only adds the prefix space and applies the GPT-2 split when use_regex is set.
class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  bool add_prefix_space = true;
  bool use_regex = true;
  const Regex* gpt2 = nullptr;
  Status apply(std::vector<Piece>* pieces, PieceStore* store) const override {
    if (add_prefix_space) {
      for (Piece& p : *pieces) {
        if (p.text.empty() || p.text[0] != ' ') {
          std::string spaced(1, ' ');
          spaced.append(p.text);
          store->push_back(std::move(spaced));
          p.text = store->back();
        }
      }
    }
    if (!use_regex) return Status::ok();
    thread_local std::vector<Piece> out;
    thread_local std::vector<std::pair<size_t, size_t>> matches;
    out.clear();
    for (const Piece& p : *pieces) {
      NB_RETURN_IF_ERROR(gpt2->find_all(p.text, &matches));
      split_by_matches(p, matches, false, Behavior::kIsolated, &out);
    }
    pieces->swap(out);
    return Status::ok();
  }
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  std::string replacement;  // one character, UTF-8
  PrependScheme scheme = PrependScheme::kAlways;
  bool split = true;
  Status apply(std::vector<Piece>* pieces, PieceStore* store) const override {
    thread_local std::vector<Piece> out;
    thread_local std::vector<std::pair<size_t, size_t>> matches;
    out.clear();
    for (const Piece& p : *pieces) {
      std::string s;
      for (char c : p.text) {
        if (c == ' ') s += replacement;
        else s += c;
      }
      bool starts = s.compare(0, replacement.size(), replacement) == 0;
      if (!starts && (scheme == PrependScheme::kAlways || (scheme == PrependScheme::kFirst && p.at_origin))) s.insert(0, replacement);
      store->push_back(std::move(s));
      Piece np{store->back(), p.at_origin};
      if (!split) {
        out.push_back(np);
        continue;
      }
      matches.clear();
      for (size_t pos = np.text.find(replacement); pos != std::string_view::npos; pos = np.text.find(replacement, pos + replacement.size()))
        matches.emplace_back(pos, pos + replacement.size());
      split_by_matches(np, matches, false, Behavior::kMergedWithNext, &out);
    }
    pieces->swap(out);
    return Status::ok();
  }
};

Result<Behavior> parse_behavior(const Json& j, const JsonPath& at) {
  NB_ASSIGN_OR_RETURN(std::string b, string_field(j, "behavior", at));
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  return format_error(strformat("%s: unknown split behavior '%s'", (at / "behavior").str().c_str(), b.c_str()));
}

const Regex& gpt2_regex() {
  static const Regex re = [] {
    auto r = Regex::compile(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", "ByteLevel");
    NB_CHECK(r.is_ok(), "the GPT-2 pattern must compile: %s", r.status().to_string().c_str());
    return std::move(r).value();
  }();
  return re;
}

Result<std::unique_ptr<PreTokenizer>> parse_metaspace(const Json& j, const JsonPath& at) {
  auto m = std::make_unique<MetaspacePreTokenizer>();
  NB_ASSIGN_OR_RETURN(m->replacement, string_field(j, "replacement", at));
  size_t i = 0;
  if (m->replacement.empty() || (utf8_next(m->replacement, i), i != m->replacement.size()))
    return format_error(strformat("%s: expected one character, got '%s'", (at / "replacement").str().c_str(), m->replacement.c_str()));
  NB_ASSIGN_OR_RETURN(m->split, bool_field(j, "split", at, true));
  NB_ASSIGN_OR_RETURN(bool add_prefix_space, bool_field(j, "add_prefix_space", at, true));
  std::string scheme = add_prefix_space ? "always" : "never";  // files older than prepend_scheme
  if (field(j, "prepend_scheme")) { NB_ASSIGN_OR_RETURN(scheme, string_field(j, "prepend_scheme", at)); }
  if (scheme == "always") m->scheme = PrependScheme::kAlways;
  else if (scheme == "first") m->scheme = PrependScheme::kFirst;
  else if (scheme == "never") m->scheme = PrependScheme::kNever;
  else return format_error(strformat("%s: expected always, first or never, got '%s'", (at / "prepend_scheme").str().c_str(), scheme.c_str()));
  return std::unique_ptr<PreTokenizer>(std::move(m));
}

}  // namespace

Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const Json& j, const JsonPath& at, bool* byte_level) {
  if (j.is_null()) return std::unique_ptr<PreTokenizer>();
  auto type_or = string_field(j, "type", at);
  if (!type_or.is_ok()) return type_or.status();
  const std::string& type = *type_or;
  if (type == "Sequence") {
    const Json* list = field(j, "pretokenizers");
    if (list == nullptr || !list->is_array()) return format_error(strformat("%s: expected an array", (at / "pretokenizers").str().c_str()));
    auto seq = std::make_unique<SequencePreTokenizer>();
    for (size_t i = 0; i < list->size(); ++i) {
      NB_ASSIGN_OR_RETURN(auto step, parse_pre_tokenizer((*list)[i], (at / "pretokenizers")[i], byte_level));
      if (step) seq->steps.push_back(std::move(step));
    }
    return std::unique_ptr<PreTokenizer>(std::move(seq));
  }
  if (*byte_level)
    return unsupported(strformat("%s: a %s pre-tokenizer after ByteLevel (nibble needs ByteLevel last)", at.str().c_str(), type.c_str()));
  if (type == "Split") {
    NB_ASSIGN_OR_RETURN(Regex re, parse_pattern(j, at));
    NB_ASSIGN_OR_RETURN(Behavior b, parse_behavior(j, at));
    NB_ASSIGN_OR_RETURN(bool invert, bool_field(j, "invert", at, false));
    return std::unique_ptr<PreTokenizer>(new SplitPreTokenizer(std::move(re), b, invert));
  }
  if (type == "ByteLevel") {
    auto b = std::make_unique<ByteLevelPreTokenizer>();
    NB_ASSIGN_OR_RETURN(b->add_prefix_space, bool_field(j, "add_prefix_space", at, true));
    NB_ASSIGN_OR_RETURN(b->use_regex, bool_field(j, "use_regex", at, true));
    b->gpt2 = &gpt2_regex();
    *byte_level = true;
    return std::unique_ptr<PreTokenizer>(std::move(b));
  }
  if (type == "Metaspace") return parse_metaspace(j, at);
  return unsupported(strformat("%s: unknown pre-tokenizer type '%s' (nibble supports Sequence, Split, ByteLevel, Metaspace)",
                               (at / "type").str().c_str(), type.c_str()));
}

}  // namespace nb::tok
