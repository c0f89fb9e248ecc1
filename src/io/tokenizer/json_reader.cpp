#include "io/tokenizer/json_reader.h"

#include <vector>

namespace nb::tok {
namespace {

using Json = nlohmann::json;

// Builds the DOM like nlohmann's own SAX DOM parser, except under root.model.vocab and
// root.model.merges, which are collected into the BpeSpec.
class Handler : public nlohmann::json_sax<Json> {
 public:
  explicit Handler(TokenizerJson* out) : out_(out) {}
  std::string error;

  bool null() override { return scalar(Json(nullptr)); }
  bool boolean(bool v) override { return scalar(Json(v)); }
  bool number_integer(number_integer_t v) override { return mode_ == kVocab ? vocab_id(v) : scalar(Json(v)); }
  bool number_unsigned(number_unsigned_t v) override {
    if (mode_ == kVocab) return vocab_id(v > static_cast<uint64_t>(INT64_MAX) ? -1 : static_cast<int64_t>(v));
    return scalar(Json(v));
  }
  bool number_float(number_float_t v, const string_t&) override { return scalar(Json(v)); }
  bool binary(binary_t&) override { return fail("binary values are not JSON"); }
  bool string(string_t& v) override {
    if (mode_ == kMerges) return legacy_merge(v);
    if (mode_ == kMergePair) {
      pair_.push_back(std::move(v));
      return true;
    }
    return scalar(Json(std::move(v)));
  }
  bool key(string_t& k) override {
    key_ = std::move(k);
    return true;
  }
  bool start_object(std::size_t) override {
    if (mode_ != kNone) return fail(where() + ": unexpected object");
    if (in_model() && key_ == "vocab") {
      mode_ = kVocab;
      out_->has_vocab = true;
      return true;
    }
    return open(Json::object());
  }
  bool end_object() override {
    if (mode_ == kVocab) {
      mode_ = kNone;
      return true;
    }
    stack_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    if (mode_ == kMerges) {
      mode_ = kMergePair;
      pair_.clear();
      return true;
    }
    if (mode_ != kNone) return fail(where() + ": unexpected array");
    if (in_model() && key_ == "merges") {
      mode_ = kMerges;
      out_->has_merges = true;
      return true;
    }
    return open(Json::array());
  }
  bool end_array() override {
    if (mode_ == kMergePair) {
      if (pair_.size() != 2)
        return fail(strformat("model.merges[%zu]: expected a pair of tokens, got %zu strings", out_->bpe.merges.size(), pair_.size()));
      out_->bpe.merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
      mode_ = kMerges;
      return true;
    }
    if (mode_ == kMerges) {
      mode_ = kNone;
      return true;
    }
    stack_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) override {
    return fail(std::string("invalid JSON: ") + ex.what());
  }

 private:
  enum Mode { kNone, kVocab, kMerges, kMergePair };

  bool fail(std::string msg) {
    if (error.empty()) error = std::move(msg);
    return false;
  }
  std::string where() const {
    switch (mode_) {
      case kVocab: return "model.vocab['" + key_ + "']";
      case kMerges: return strformat("model.merges[%zu]", out_->bpe.merges.size());
      case kMergePair: return strformat("model.merges[%zu]", out_->bpe.merges.size());
      default: return "";
    }
  }
  // True when the next value is a direct member of root.model.
  bool in_model() const { return stack_.size() == 2 && model_ != nullptr && stack_.back() == model_; }

  bool vocab_id(int64_t v) {
    out_->bpe.vocab.emplace_back(std::move(key_), v);
    return true;
  }
  bool legacy_merge(const std::string& line) {
    size_t sp = line.find(' ');
    if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
      return fail(strformat("model.merges[%zu]: expected \"left right\" (one space), got \"%s\"", out_->bpe.merges.size(), line.c_str()));
    out_->bpe.merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    return true;
  }
  Json* insert(Json&& v) {
    if (stack_.empty()) {
      out_->doc = std::move(v);
      return &out_->doc;
    }
    Json* parent = stack_.back();
    if (parent->is_object()) {
      Json& slot = (*parent)[key_];
      slot = std::move(v);
      return &slot;
    }
    parent->push_back(std::move(v));
    return &parent->back();
  }
  bool scalar(Json&& v) {
    if (mode_ != kNone) return fail(where() + ": unexpected value " + v.dump());
    insert(std::move(v));
    return true;
  }
  bool open(Json&& container) {
    bool is_model = stack_.size() == 1 && key_ == "model" && container.is_object();
    Json* j = insert(std::move(container));
    if (is_model) model_ = j;
    stack_.push_back(j);
    return true;
  }

  TokenizerJson* out_;
  std::vector<Json*> stack_;
  std::string key_;
  Json* model_ = nullptr;
  Mode mode_ = kNone;
  std::vector<std::string> pair_;
};

}  // namespace

Result<TokenizerJson> read_tokenizer_json(std::string_view text, const std::string& source) {
  TokenizerJson out;
  Handler h(&out);
  bool ok = false;
  try {
    ok = Json::sax_parse(text.begin(), text.end(), &h, Json::input_format_t::json, /*strict=*/true);
  } catch (const std::exception& e) {  // sax_parse reports through the handler; be safe anyway
    return format_error(strformat("%s: %s", source.c_str(), e.what()));
  }
  if (!ok) return format_error(strformat("%s: %s", source.c_str(), h.error.empty() ? "invalid JSON" : h.error.c_str()));
  if (!out.doc.is_object()) return format_error(strformat("%s: expected a JSON object at the top level", source.c_str()));
  return out;
}

}  // namespace nb::tok
