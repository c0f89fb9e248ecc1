// Normalizers of tokenizer.json and the shared JSON field helpers.
#include <utility>

#include "io/tokenizer/pipeline.h"
#include "io/tokenizer/regex.h"
#include "io/tokenizer/unicode.h"

namespace nb::tok {

const Json* field(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(std::string(key));
  return (it == obj.end() || it->is_null()) ? nullptr : &*it;
}

namespace {
std::string describe(const Json& j) {
  std::string d = j.dump();
  if (d.size() > 60) d = d.substr(0, 57) + "...";
  return std::string(j.type_name()) + " " + d;
}
}  // namespace

Result<std::string> string_field(const Json& obj, std::string_view key, const JsonPath& at) {
  const Json* v = field(obj, key);
  if (v == nullptr) return format_error(strformat("%s: missing field '%.*s'", at.str().c_str(), static_cast<int>(key.size()), key.data()));
  if (!v->is_string())
    return format_error(strformat("%s: expected a string, got %s", (at / key).str().c_str(), describe(*v).c_str()));
  return v->get<std::string>();
}

Result<bool> bool_field(const Json& obj, std::string_view key, const JsonPath& at, bool fallback) {
  const Json* v = field(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return format_error(strformat("%s: expected true or false, got %s", (at / key).str().c_str(), describe(*v).c_str()));
  return v->get<bool>();
}

// {"String": literal} or {"Regex": pattern}, compiled as HF does (literals are escaped).
Result<Regex> parse_pattern(const Json& obj, const JsonPath& at) {
  const Json* p = field(obj, "pattern");
  const JsonPath pat = at / "pattern";
  if (p == nullptr || !p->is_object()) return format_error(strformat("%s: expected {\"String\": ...} or {\"Regex\": ...}", pat.str().c_str()));
  if (const Json* s = field(*p, "String"); s && s->is_string()) return Regex::literal(s->get<std::string>(), pat.str());
  if (const Json* r = field(*p, "Regex"); r && r->is_string()) return Regex::compile(r->get<std::string>(), pat.str());
  return format_error(strformat("%s: expected {\"String\": ...} or {\"Regex\": ...}, got %s", pat.str().c_str(), describe(*p).c_str()));
}

// Replaces every match of `re` in `text` by `content` (NormalizedString::replace / Replace decoder).
Status replace_all(const Regex& re, const std::string& content, std::string* text) {
  thread_local std::vector<std::pair<size_t, size_t>> m;
  NB_RETURN_IF_ERROR(re.find_all(*text, &m));
  if (m.empty()) return Status::ok();
  std::string out;
  out.reserve(text->size() + m.size() * content.size());
  size_t prev = 0;
  for (auto [s, e] : m) {
    out.append(*text, prev, s - prev);
    out += content;
    prev = e;
  }
  out.append(*text, prev, std::string::npos);
  *text = std::move(out);
  return Status::ok();
}

namespace {

class SequenceNormalizer : public Normalizer {
 public:
  std::vector<std::unique_ptr<Normalizer>> steps;
  Status apply(std::string* t) const override {
    for (const auto& s : steps) NB_RETURN_IF_ERROR(s->apply(t));
    return Status::ok();
  }
};

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm f) : form_(f) {}
  Status apply(std::string* t) const override {
    NB_ASSIGN_OR_RETURN(*t, unicode_normalize(*t, form_));
    return Status::ok();
  }

 private:
  NormalForm form_;
};

class PrependNormalizer : public Normalizer {
 public:
  std::string prepend;
  Status apply(std::string* t) const override {
    if (!t->empty()) t->insert(0, prepend);
    return Status::ok();
  }
};

class ReplaceNormalizer : public Normalizer {
 public:
  explicit ReplaceNormalizer(Regex re, std::string content) : re_(std::move(re)), content_(std::move(content)) {}
  Status apply(std::string* t) const override { return replace_all(re_, content_, t); }

 private:
  Regex re_;
  std::string content_;
};

// Strips White_Space (Rust char::is_whitespace) on either side.
class StripNormalizer : public Normalizer {
 public:
  bool left = true, right = true;
  Status apply(std::string* t) const override {
    size_t b = 0, e = t->size();
    while (left && b < e) {
      size_t i = b;
      if (!is_white_space(utf8_next(*t, i))) break;
      b = i;
    }
    while (right && e > b) {
      size_t p = e - 1;
      while (p > b && (static_cast<uint8_t>((*t)[p]) & 0xC0) == 0x80) --p;
      size_t i = p;
      if (!is_white_space(utf8_next(*t, i))) break;
      e = p;
    }
    *t = t->substr(b, e - b);
    return Status::ok();
  }
};

}  // namespace

Result<std::unique_ptr<Normalizer>> parse_normalizer(const Json& j, const JsonPath& at) {
  if (j.is_null()) return std::unique_ptr<Normalizer>();
  NB_ASSIGN_OR_RETURN(std::string type, string_field(j, "type", at));
  if (type == "Sequence") {
    const Json* list = field(j, "normalizers");
    if (list == nullptr || !list->is_array()) return format_error(strformat("%s: expected an array", (at / "normalizers").str().c_str()));
    auto seq = std::make_unique<SequenceNormalizer>();
    for (size_t i = 0; i < list->size(); ++i) {
      NB_ASSIGN_OR_RETURN(auto step, parse_normalizer((*list)[i], (at / "normalizers")[i]));
      if (step) seq->steps.push_back(std::move(step));
    }
    return std::unique_ptr<Normalizer>(std::move(seq));
  }
  if (type == "NFC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNFC));
  if (type == "NFD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNFD));
  if (type == "NFKC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNFKC));
  if (type == "NFKD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNFKD));
  if (type == "Prepend") {
    auto n = std::make_unique<PrependNormalizer>();
    NB_ASSIGN_OR_RETURN(n->prepend, string_field(j, "prepend", at));
    return std::unique_ptr<Normalizer>(std::move(n));
  }
  if (type == "Replace") {
    NB_ASSIGN_OR_RETURN(Regex re, parse_pattern(j, at));
    NB_ASSIGN_OR_RETURN(std::string content, string_field(j, "content", at));
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(std::move(re), std::move(content)));
  }
  if (type == "Strip") {
    auto n = std::make_unique<StripNormalizer>();
    NB_ASSIGN_OR_RETURN(n->left, bool_field(j, "strip_left", at, true));
    NB_ASSIGN_OR_RETURN(n->right, bool_field(j, "strip_right", at, true));
    return std::unique_ptr<Normalizer>(std::move(n));
  }
  return unsupported(strformat("%s: unknown normalizer type '%s' (nibble supports Sequence, NFC, NFD, NFKC, NFKD, Prepend, Replace, Strip)",
                               (at / "type").str().c_str(), type.c_str()));
}

}  // namespace nb::tok
