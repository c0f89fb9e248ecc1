// Decoders and post-processors of tokenizer.json.
#include <utility>

#include "io/tokenizer/pipeline.h"
#include "io/tokenizer/regex.h"
#include "io/tokenizer/unicode.h"

namespace nb::tok {
namespace {

class SequenceDecoder : public Decoder {
 public:
  std::vector<std::unique_ptr<Decoder>> steps;
  Status apply(std::vector<std::string>* t, DecodeState* st) const override {
    for (const auto& s : steps) NB_RETURN_IF_ERROR(s->apply(t, st));
    return Status::ok();
  }
};

// Tokens whose characters are all in the byte alphabet become those bytes, others keep their
// UTF-8 bytes; the concatenation is decoded lossily into one string.
class ByteLevelDecoder : public Decoder {
 public:
  Status apply(std::vector<std::string>* tokens, DecodeState* st) const override {
    std::string bytes;
    for (const std::string& t : *tokens) {
      size_t mark = bytes.size();
      bool all = true;
      for (size_t i = 0; i < t.size();) {
        int b = unicode_to_byte(utf8_next(t, i));
        if (b < 0) { all = false; break; }
        bytes.push_back(static_cast<char>(b));
      }
      if (!all) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    st->incomplete = utf8_incomplete_tail(bytes) > 0;
    tokens->assign(1, utf8_lossy(bytes));
    return Status::ok();
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  std::string replacement;
  bool prepend = true;  // prepend_scheme != never
  Status apply(std::vector<std::string>* tokens, DecodeState*) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      std::string out;
      for (size_t p = 0; p < t.size();) {
        if (t.compare(p, replacement.size(), replacement) == 0) {
          if (!(i == 0 && prepend)) out += ' ';
          p += replacement.size();
        } else {
          out += t[p++];
        }
      }
      t = std::move(out);
    }
    return Status::ok();
  }
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(Regex re, std::string content) : re_(std::move(re)), content_(std::move(content)) {}
  Status apply(std::vector<std::string>* tokens, DecodeState*) const override {
    for (std::string& t : *tokens) NB_RETURN_IF_ERROR(replace_all(re_, content_, &t));
    return Status::ok();
  }

 private:
  Regex re_;
  std::string content_;
};

// Runs of "<0xXX>" tokens become their bytes when they form valid UTF-8, else one U+FFFD per
// byte (HF decoders/byte_fallback.rs).
class ByteFallbackDecoder : public Decoder {
 public:
  Status apply(std::vector<std::string>* tokens, DecodeState* st) const override {
    std::vector<std::string> out;
    std::string run;
    size_t run_len = 0;
    auto flush = [&] {
      if (run_len == 0) return;
      if (utf8_invalid_offset(run) == kValidUtf8) {
        out.push_back(run);
      } else {
        for (size_t i = 0; i < run_len; ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      run.clear();
      run_len = 0;
    };
    bool last_was_byte = false;
    for (std::string& t : *tokens) {
      int byte = parse_byte_token(t);
      last_was_byte = byte >= 0;
      if (byte >= 0) {
        run.push_back(static_cast<char>(byte));
        ++run_len;
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    // A trailing run may still grow, and a longer run may decode differently (e.g. to U+FFFDs).
    st->incomplete = last_was_byte;
    *tokens = std::move(out);
    return Status::ok();
  }

 private:
  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int parse_byte_token(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class FuseDecoder : public Decoder {
 public:
  Status apply(std::vector<std::string>* tokens, DecodeState*) const override {
    std::string all;
    for (const std::string& t : *tokens) all += t;
    tokens->assign(1, std::move(all));
    return Status::ok();
  }
};

// Removes up to `start` leading and `stop` trailing `content` characters from each token.
class StripDecoder : public Decoder {
 public:
  std::string content;  // one character
  size_t start = 0, stop = 0;
  Status apply(std::vector<std::string>* tokens, DecodeState*) const override {
    for (std::string& t : *tokens) {
      size_t b = 0, e = t.size();
      for (size_t k = 0; k < start && t.compare(b, content.size(), content) == 0 && b + content.size() <= e; ++k) b += content.size();
      for (size_t k = 0; k < stop && e >= b + content.size() && t.compare(e - content.size(), content.size(), content) == 0; ++k)
        e -= content.size();
      t = t.substr(b, e - b);
    }
    return Status::ok();
  }
};

Result<size_t> size_field(const Json& j, std::string_view key, const JsonPath& at) {
  const Json* v = field(j, key);
  if (v == nullptr) return size_t{0};
  if (!v->is_number_unsigned()) return format_error(strformat("%s: expected a non-negative integer", (at / key).str().c_str()));
  return v->get<size_t>();
}

}  // namespace

Result<std::unique_ptr<Decoder>> parse_decoder(const Json& j, const JsonPath& at) {
  if (j.is_null()) return std::unique_ptr<Decoder>();
  NB_ASSIGN_OR_RETURN(std::string type, string_field(j, "type", at));
  if (type == "Sequence") {
    const Json* list = field(j, "decoders");
    if (list == nullptr || !list->is_array()) return format_error(strformat("%s: expected an array", (at / "decoders").str().c_str()));
    auto seq = std::make_unique<SequenceDecoder>();
    for (size_t i = 0; i < list->size(); ++i) {
      NB_ASSIGN_OR_RETURN(auto step, parse_decoder((*list)[i], (at / "decoders")[i]));
      if (step) seq->steps.push_back(std::move(step));
    }
    return std::unique_ptr<Decoder>(std::move(seq));
  }
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevelDecoder());
  if (type == "Metaspace") {
    auto m = std::make_unique<MetaspaceDecoder>();
    NB_ASSIGN_OR_RETURN(m->replacement, string_field(j, "replacement", at));
    NB_ASSIGN_OR_RETURN(bool add_prefix_space, bool_field(j, "add_prefix_space", at, true));
    std::string scheme = add_prefix_space ? "always" : "never";
    if (field(j, "prepend_scheme")) { NB_ASSIGN_OR_RETURN(scheme, string_field(j, "prepend_scheme", at)); }
    m->prepend = scheme != "never";
    return std::unique_ptr<Decoder>(std::move(m));
  }
  if (type == "Replace") {
    NB_ASSIGN_OR_RETURN(Regex re, parse_pattern(j, at));
    NB_ASSIGN_OR_RETURN(std::string content, string_field(j, "content", at));
    return std::unique_ptr<Decoder>(new ReplaceDecoder(std::move(re), std::move(content)));
  }
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (type == "Strip") {
    auto s = std::make_unique<StripDecoder>();
    NB_ASSIGN_OR_RETURN(s->content, string_field(j, "content", at));
    NB_ASSIGN_OR_RETURN(s->start, size_field(j, "start", at));
    NB_ASSIGN_OR_RETURN(s->stop, size_field(j, "stop", at));
    if (s->content.empty()) return format_error(strformat("%s: expected one character", (at / "content").str().c_str()));
    return std::unique_ptr<Decoder>(std::move(s));
  }
  return unsupported(strformat("%s: unknown decoder type '%s' (nibble supports Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip)",
                               (at / "type").str().c_str(), type.c_str()));
}

namespace {

// A [token, id] pair of BertProcessing / RobertaProcessing.
Result<int32_t> token_pair_id(const Json& j, std::string_view key, const JsonPath& at) {
  const Json* v = field(j, key);
  if (v == nullptr || !v->is_array() || v->size() != 2 || !(*v)[1].is_number_unsigned())
    return format_error(strformat("%s: expected [token, id]", (at / key).str().c_str()));
  return (*v)[1].get<int32_t>();
}

Result<Template> parse_template(const Json& j, const JsonPath& at) {
  const Json* single = field(j, "single");
  if (single == nullptr || !single->is_array()) return format_error(strformat("%s: expected an array", (at / "single").str().c_str()));
  const Json* specials = field(j, "special_tokens");
  Template t;
  for (size_t i = 0; i < single->size(); ++i) {
    const Json& item = (*single)[i];
    const JsonPath ip = (at / "single")[i];
    if (const Json* seq = field(item, "Sequence")) {
      NB_ASSIGN_OR_RETURN(std::string id, string_field(*seq, "id", ip / "Sequence"));
      if (id != "A") return format_error(strformat("%s: a single-sequence template can only use $A, got $%s", ip.str().c_str(), id.c_str()));
      t.push_back({true, {}});
      continue;
    }
    const Json* sp = field(item, "SpecialToken");
    if (sp == nullptr) return format_error(strformat("%s: expected {\"Sequence\": ...} or {\"SpecialToken\": ...}", ip.str().c_str()));
    NB_ASSIGN_OR_RETURN(std::string name, string_field(*sp, "id", ip / "SpecialToken"));
    const Json* def = specials ? field(*specials, name) : nullptr;
    const Json* ids = def ? field(*def, "ids") : nullptr;
    if (ids == nullptr || !ids->is_array())
      return format_error(strformat("%s: special token '%s' is missing from special_tokens", ip.str().c_str(), name.c_str()));
    TemplateItem ti;
    for (const Json& id : *ids) {
      if (!id.is_number_unsigned()) return format_error(strformat("%s: special_tokens['%s'].ids: expected integers", at.str().c_str(), name.c_str()));
      ti.ids.push_back(id.get<int32_t>());
    }
    t.push_back(std::move(ti));
  }
  return t;
}

}  // namespace

Result<std::vector<Template>> parse_post_processor(const Json& j, const JsonPath& at) {
  std::vector<Template> out;
  if (j.is_null()) return out;
  NB_ASSIGN_OR_RETURN(std::string type, string_field(j, "type", at));
  if (type == "ByteLevel") return out;  // adjusts offsets only
  if (type == "TemplateProcessing") {
    NB_ASSIGN_OR_RETURN(Template t, parse_template(j, at));
    out.push_back(std::move(t));
    return out;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    NB_ASSIGN_OR_RETURN(int32_t cls, token_pair_id(j, "cls", at));
    NB_ASSIGN_OR_RETURN(int32_t sep, token_pair_id(j, "sep", at));
    out.push_back(Template{{false, {cls}}, {true, {}}, {false, {sep}}});
    return out;
  }
  if (type == "Sequence") {
    const Json* list = field(j, "processors");
    if (list == nullptr || !list->is_array()) return format_error(strformat("%s: expected an array", (at / "processors").str().c_str()));
    for (size_t i = 0; i < list->size(); ++i) {
      NB_ASSIGN_OR_RETURN(auto steps, parse_post_processor((*list)[i], (at / "processors")[i]));
      for (auto& s : steps) out.push_back(std::move(s));
    }
    return out;
  }
  return unsupported(strformat("%s: unknown post-processor type '%s' (nibble supports TemplateProcessing, ByteLevel, Sequence, "
                               "BertProcessing, RobertaProcessing)",
                               (at / "type").str().c_str(), type.c_str()));
}

}  // namespace nb::tok
