#include "io/tokenizer/tokenizer.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "core/log.h"
#include "core/mmap.h"
#include "io/tokenizer/added_vocab.h"
#include "io/tokenizer/bpe.h"
#include "io/tokenizer/json_reader.h"
#include "io/tokenizer/pipeline.h"
#include "io/tokenizer/unicode.h"

namespace nb {
namespace tok {

struct TokenizerImpl {
  std::string source;
  BpeModel model;
  AddedVocab added;
  std::unordered_map<std::string, int32_t> added_by_content;  // HF added_tokens_map
  std::unordered_set<std::string> special_contents;           // HF special_tokens_set
  Pipeline pipeline;
  int32_t vocab_size = 0;
  int32_t bos = -1;
  std::vector<int32_t> eos;

  Status encode_piece(std::string_view text, bool at_origin, bool parse_special, std::vector<int32_t>* ids) const;
  Status pre_tokenize_and_model(std::string_view text, bool at_origin, std::vector<int32_t>* ids) const;
  Result<std::string> decode(std::span<const int32_t> ids, bool skip_special, DecodeState* st) const;
  // The string a token decodes from: a normalized added token's normalized form (HF 0.23
  // simple_id_to_token), else its content, else the model's token.
  std::optional<std::string_view> token_string(int32_t id) const;
};

std::optional<std::string_view> TokenizerImpl::token_string(int32_t id) const {
  if (const AddedToken* t = added.find_by_id(id)) return std::string_view(t->normalized ? t->normalized_content : t->content);
  return model.id_to_token(id);
}

// Pre-tokenizes one normalized piece and appends the model's ids.
Status TokenizerImpl::pre_tokenize_and_model(std::string_view text, bool at_origin, std::vector<int32_t>* ids) const {
  if (!pipeline.pre_tokenizer) return model.tokenize(text, ids);
  thread_local std::vector<Piece> pieces;
  thread_local PieceStore store;
  pieces.assign(1, Piece{text, at_origin});
  store.clear();
  NB_RETURN_IF_ERROR(pipeline.pre_tokenizer->apply(&pieces, &store));
  for (const Piece& p : pieces) NB_RETURN_IF_ERROR(model.tokenize(p.text, ids));
  return Status::ok();
}

// One raw-text piece between non-normalized added tokens: normalize it, extract the normalized
// added tokens, tokenize the rest (HF AddedVocabulary::extract_and_normalize, step 2).
Status TokenizerImpl::encode_piece(std::string_view text, bool at_origin, bool parse_special, std::vector<int32_t>* ids) const {
  std::string normalized(text);
  if (pipeline.normalizer) NB_RETURN_IF_ERROR(pipeline.normalizer->apply(&normalized));
  std::vector<Segment> segs;
  added.split(normalized, /*normalized=*/true, parse_special, &segs);
  for (const Segment& s : segs) {
    if (s.token_id >= 0) {
      ids->push_back(s.token_id);
      continue;
    }
    std::string_view piece(normalized.data() + s.begin, s.end - s.begin);
    NB_RETURN_IF_ERROR(pre_tokenize_and_model(piece, at_origin && s.begin == 0, ids));
  }
  return Status::ok();
}

Result<std::string> TokenizerImpl::decode(std::span<const int32_t> ids, bool skip_special, DecodeState* st) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    std::optional<std::string_view> t = id >= 0 && id < vocab_size ? token_string(id) : std::nullopt;
    if (!t) return out_of_range(strformat("decode: ids[%zu] = %d is not a token id (vocabulary size %d)", i, id, vocab_size));
    if (skip_special && special_contents.count(std::string(*t))) continue;
    tokens.emplace_back(*t);
  }
  if (!pipeline.decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  NB_RETURN_IF_ERROR(pipeline.decoder->apply(&tokens, st));
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

namespace {

const std::vector<std::string>& llama_classes() {
  static const std::vector<std::string> k = {"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast"};
  return k;
}

Result<std::vector<AddedToken>> parse_added_tokens(const Json& doc, const JsonPath& at) {
  std::vector<AddedToken> out;
  const Json* list = field(doc, "added_tokens");
  if (list == nullptr) return out;
  if (!list->is_array()) return format_error(strformat("%s: expected an array", at.str().c_str()));
  for (size_t i = 0; i < list->size(); ++i) {
    const Json& j = (*list)[i];
    const JsonPath p = at[i];
    AddedToken t;
    const Json* id = field(j, "id");
    if (id == nullptr || !id->is_number_unsigned() || id->get<uint64_t>() >= static_cast<uint64_t>(INT32_MAX))
      return format_error(strformat("%s: expected a non-negative integer id", (p / "id").str().c_str()));
    t.id = id->get<int32_t>();
    NB_ASSIGN_OR_RETURN(t.content, string_field(j, "content", p));
    NB_ASSIGN_OR_RETURN(t.single_word, bool_field(j, "single_word", p, false));
    NB_ASSIGN_OR_RETURN(t.lstrip, bool_field(j, "lstrip", p, false));
    NB_ASSIGN_OR_RETURN(t.rstrip, bool_field(j, "rstrip", p, false));
    NB_ASSIGN_OR_RETURN(t.special, bool_field(j, "special", p, false));
    NB_ASSIGN_OR_RETURN(t.normalized, bool_field(j, "normalized", p, !t.special));
    out.push_back(std::move(t));
  }
  return out;
}

Result<BpeSpec> parse_model(TokenizerJson& tj, const JsonPath& at) {
  const Json* m = field(tj.doc, "model");
  if (m == nullptr || !m->is_object()) return format_error(strformat("%s: missing object", at.str().c_str()));
  std::string type = "BPE";  // HF infers BPE from vocab + merges when "type" is absent
  if (field(*m, "type")) { NB_ASSIGN_OR_RETURN(type, string_field(*m, "type", at)); }
  if (type != "BPE")
    return unsupported(strformat("%s: model type '%s' is not supported (nibble supports BPE)", (at / "type").str().c_str(), type.c_str()));
  if (!tj.has_vocab || !tj.has_merges) return format_error(strformat("%s: a BPE model needs an object 'vocab' and an array 'merges'", at.str().c_str()));
  if (const Json* d = field(*m, "dropout"); d && !(d->is_number() && d->get<double>() == 0.0))
    return unsupported(strformat("%s: BPE dropout is not supported (it makes encoding random)", (at / "dropout").str().c_str()));
  BpeSpec spec = std::move(tj.bpe);
  auto opt_string = [&](const char* key, std::optional<std::string>* out) -> Status {
    if (field(*m, key)) { NB_ASSIGN_OR_RETURN(*out, string_field(*m, key, at)); }
    return Status::ok();
  };
  NB_RETURN_IF_ERROR(opt_string("unk_token", &spec.unk_token));
  NB_RETURN_IF_ERROR(opt_string("continuing_subword_prefix", &spec.continuing_subword_prefix));
  NB_RETURN_IF_ERROR(opt_string("end_of_word_suffix", &spec.end_of_word_suffix));
  NB_ASSIGN_OR_RETURN(spec.ignore_merges, bool_field(*m, "ignore_merges", at, false));
  NB_ASSIGN_OR_RETURN(spec.byte_fallback, bool_field(*m, "byte_fallback", at, false));
  NB_ASSIGN_OR_RETURN(spec.fuse_unk, bool_field(*m, "fuse_unk", at, false));
  return spec;
}

// bos_token / eos_token of tokenizer_config.json: a string, {"content": ...} or null.
Result<std::optional<std::string>> config_token(const Json& cfg, const char* key, const JsonPath& at) {
  const Json* v = field(cfg, key);
  if (v == nullptr) return std::optional<std::string>();
  if (v->is_string()) return std::optional<std::string>(v->get<std::string>());
  if (v->is_object()) {
    NB_ASSIGN_OR_RETURN(std::string c, string_field(*v, "content", at / key));
    return std::optional<std::string>(c);
  }
  return format_error(strformat("%s: expected a string or {\"content\": ...}", (at / key).str().c_str()));
}

int32_t lookup_token(const TokenizerImpl& impl, std::string_view content) {
  auto it = impl.added_by_content.find(std::string(content));
  return it != impl.added_by_content.end() ? it->second : impl.model.token_to_id(content);
}

Status apply_config(TokenizerImpl& impl, std::string_view config_text) {
  if (config_text.empty()) return Status::ok();
  Json cfg;
  try {
    cfg = Json::parse(config_text.begin(), config_text.end());
  } catch (const std::exception& e) {
    return format_error(strformat("tokenizer_config.json: invalid JSON: %s", e.what()));
  }
  const JsonPath at{"tokenizer_config.json", ""};
  NB_ASSIGN_OR_RETURN(auto bos, config_token(cfg, "bos_token", at));
  NB_ASSIGN_OR_RETURN(auto eos, config_token(cfg, "eos_token", at));
  auto resolve = [&](const std::optional<std::string>& c, const char* key, int32_t* id) -> Status {
    if (!c) return Status::ok();
    *id = lookup_token(impl, *c);
    if (*id < 0) return format_error(strformat("tokenizer_config.json: %s '%s' is not a token of tokenizer.json", key, c->c_str()));
    return Status::ok();
  };
  int32_t eos_id = -1;
  NB_RETURN_IF_ERROR(resolve(bos, "bos_token", &impl.bos));
  NB_RETURN_IF_ERROR(resolve(eos, "eos_token", &eos_id));
  if (eos_id >= 0) impl.eos.push_back(eos_id);

  std::string cls;
  if (field(cfg, "tokenizer_class")) { NB_ASSIGN_OR_RETURN(cls, string_field(cfg, "tokenizer_class", at)); }
  const auto& llama = llama_classes();
  if (std::find(llama.begin(), llama.end(), cls) == llama.end()) return Status::ok();
  NB_ASSIGN_OR_RETURN(bool add_bos, bool_field(cfg, "add_bos_token", at, true));
  NB_ASSIGN_OR_RETURN(bool add_eos, bool_field(cfg, "add_eos_token", at, false));
  if (add_bos && impl.bos < 0) return format_error("tokenizer_config.json: add_bos_token is true but bos_token is not set");
  if (add_eos && eos_id < 0) return format_error("tokenizer_config.json: add_eos_token is true but eos_token is not set");
  Template t;
  if (add_bos) t.push_back({false, {impl.bos}});
  t.push_back({true, {}});
  if (add_eos) t.push_back({false, {eos_id}});
  impl.pipeline.post.assign(1, std::move(t));
  return Status::ok();
}

// HF AddedVocabulary::add_tokens: the ids written in the file are only checked (with a
// warning); a token gets the model's id for its content when the model has one, else the next id
// after the model vocabulary (counted in entries) and the added tokens so far.
Status build_added(TokenizerImpl& impl, std::vector<AddedToken> tokens) {
  int32_t model_size = static_cast<int32_t>(impl.model.vocab_entries());
  int32_t max_added = -1;
  std::vector<AddedToken> kept;
  std::unordered_map<int32_t, size_t> index_of_id;
  for (AddedToken& t : tokens) {
    if (t.content.empty()) continue;
    t.normalized_content = t.content;
    if (t.normalized && impl.pipeline.normalizer) NB_RETURN_IF_ERROR(impl.pipeline.normalizer->apply(&t.normalized_content));
    int32_t id = lookup_token(impl, t.content);
    if (id < 0) id = max_added < 0 ? model_size : (max_added >= model_size || model_size == 0 ? max_added + 1 : model_size);
    if (id != t.id) NB_LOG_WARN("%s: added token '%s' has id %d in the file but gets id %d (as in Hugging Face tokenizers)",
                                impl.source.c_str(), t.content.c_str(), t.id, id);
    t.id = id;
    max_added = std::max(max_added, id);
    impl.added_by_content[t.content] = id;
    if (t.special) impl.special_contents.insert(t.content);
    auto it = index_of_id.find(id);
    if (it != index_of_id.end()) {
      kept[it->second] = std::move(t);  // the same id again: the later token replaces it
    } else {
      index_of_id[id] = kept.size();
      kept.push_back(std::move(t));
    }
  }
  impl.vocab_size = std::max(impl.model.id_bound(), max_added + 1);
  impl.added.build(std::move(kept));
  return Status::ok();
}

// Every id a template adds must exist, so that decode() of an encoding never fails.
Status check_template_ids(const TokenizerImpl& impl, const std::string& source) {
  for (const Template& t : impl.pipeline.post) {
    for (const TemplateItem& item : t) {
      for (int32_t id : item.ids) {
        if (id < 0 || id >= impl.vocab_size || !impl.token_string(id))
          return format_error(strformat("%s: post_processor: special token id %d is not in the vocabulary", source.c_str(), id));
      }
    }
  }
  return Status::ok();
}

}  // namespace
}  // namespace tok

namespace tok {
namespace {

// generation_config.json lists the ids that end generation (Llama-3 Instruct adds <|eot_id|>).
Status apply_generation_config(TokenizerImpl& impl, std::string_view text, const std::string& source) {
  Json gen;
  try {
    gen = Json::parse(text.begin(), text.end());
  } catch (const std::exception& e) {
    return format_error(strformat("%s: invalid JSON: %s", source.c_str(), e.what()));
  }
  const Json* e = field(gen, "eos_token_id");
  if (e == nullptr) return Status::ok();
  std::vector<Json> list = e->is_array() ? e->get<std::vector<Json>>() : std::vector<Json>{*e};
  for (const Json& v : list) {
    if (!v.is_number_unsigned() || v.get<uint64_t>() >= static_cast<uint64_t>(impl.vocab_size))
      return format_error(strformat("%s: eos_token_id: expected token ids below %d, got %s", source.c_str(), impl.vocab_size, v.dump().c_str()));
    int32_t id = v.get<int32_t>();
    if (std::find(impl.eos.begin(), impl.eos.end(), id) == impl.eos.end()) impl.eos.push_back(id);
  }
  return Status::ok();
}

Result<std::shared_ptr<TokenizerImpl>> build_impl(std::string_view tokenizer_json, std::string_view config_text, const std::string& source) {
  NB_ASSIGN_OR_RETURN(TokenizerJson tj, read_tokenizer_json(tokenizer_json, source));
  auto impl = std::make_shared<TokenizerImpl>();
  impl->source = source;
  const JsonPath root{source, ""};
  Pipeline& p = impl->pipeline;
  NB_ASSIGN_OR_RETURN(p.normalizer, parse_normalizer(tj.doc.value("normalizer", Json()), root / "normalizer"));
  NB_ASSIGN_OR_RETURN(p.pre_tokenizer, parse_pre_tokenizer(tj.doc.value("pre_tokenizer", Json()), root / "pre_tokenizer", &p.byte_level));
  NB_ASSIGN_OR_RETURN(p.decoder, parse_decoder(tj.doc.value("decoder", Json()), root / "decoder"));
  NB_ASSIGN_OR_RETURN(p.post, parse_post_processor(tj.doc.value("post_processor", Json()), root / "post_processor"));
  NB_ASSIGN_OR_RETURN(BpeSpec spec, parse_model(tj, root / "model"));
  NB_ASSIGN_OR_RETURN(impl->model, BpeModel::build(std::move(spec), p.byte_level, source));
  NB_ASSIGN_OR_RETURN(auto added, parse_added_tokens(tj.doc, root / "added_tokens"));
  NB_RETURN_IF_ERROR(build_added(*impl, std::move(added)));
  NB_RETURN_IF_ERROR(apply_config(*impl, config_text));
  NB_RETURN_IF_ERROR(check_template_ids(*impl, source));
  return impl;
}

}  // namespace
}  // namespace tok

Result<Tokenizer> Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_text, const std::string& source) {
  NB_ASSIGN_OR_RETURN(auto impl, tok::build_impl(tokenizer_json, config_text, source));
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

Result<Tokenizer> Tokenizer::load(const std::string& model_dir) {
  const std::string path = path_join(model_dir, "tokenizer.json");
  NB_ASSIGN_OR_RETURN(MappedFile f, MappedFile::open(path));
  std::string config;
  const std::string config_path = path_join(model_dir, "tokenizer_config.json");
  if (file_exists(config_path)) { NB_ASSIGN_OR_RETURN(config, read_text_file(config_path)); }
  std::string_view text(reinterpret_cast<const char*>(f.data()), f.size());
  NB_ASSIGN_OR_RETURN(auto impl, tok::build_impl(text, config, path));
  const std::string gen_path = path_join(model_dir, "generation_config.json");
  if (file_exists(gen_path)) {
    NB_ASSIGN_OR_RETURN(std::string gen_text, read_text_file(gen_path));
    NB_RETURN_IF_ERROR(tok::apply_generation_config(*impl, gen_text, gen_path));
  }
  Tokenizer t;
  t.impl_ = std::move(impl);
  return t;
}

Result<std::vector<int32_t>> Tokenizer::encode(std::string_view text, bool add_special_tokens, bool parse_special) const {
  using namespace tok;
  if (size_t bad = utf8_invalid_offset(text); bad != kValidUtf8)
    return invalid_argument(strformat("encode: input text is not valid UTF-8: byte 0x%02X at byte offset %zu", static_cast<uint8_t>(text[bad]), bad));
  const TokenizerImpl& impl = *impl_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  std::vector<Segment> segs;
  impl.added.split(text, /*normalized=*/false, parse_special, &segs);
  for (const Segment& s : segs) {
    if (s.token_id >= 0) ids.push_back(s.token_id);
    else NB_RETURN_IF_ERROR(impl.encode_piece(text.substr(s.begin, s.end - s.begin), s.begin == 0, parse_special, &ids));
  }
  if (!add_special_tokens) return ids;
  for (const Template& t : impl.pipeline.post) {
    std::vector<int32_t> wrapped;
    wrapped.reserve(ids.size() + t.size());
    for (const TemplateItem& item : t) {
      if (item.is_sequence) wrapped.insert(wrapped.end(), ids.begin(), ids.end());
      else wrapped.insert(wrapped.end(), item.ids.begin(), item.ids.end());
    }
    ids = std::move(wrapped);
  }
  return ids;
}

Result<std::string> Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  tok::DecodeState st;
  return impl_->decode(ids, skip_special_tokens, &st);
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

int32_t Tokenizer::token_to_id(std::string_view token) const { return tok::lookup_token(*impl_, token); }

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  auto t = impl_->token_string(id);
  return t ? std::optional<std::string>(std::string(*t)) : std::nullopt;
}

int32_t Tokenizer::bos_id() const { return impl_->bos; }
const std::vector<int32_t>& Tokenizer::eos_ids() const { return impl_->eos; }

bool Tokenizer::is_special(int32_t id) const {
  const tok::AddedToken* t = impl_->added.find_by_id(id);
  return t != nullptr && t->special;
}

// ---- StreamDecoder: HF DecodeStream's windowing, with an exact completeness test instead of
// "does not end with U+FFFD". ids_[0, read_index_) is context already emitted; prefix_ is its text.

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : impl_(tokenizer.impl_), skip_special_(skip_special_tokens) {}

void StreamDecoder::reset() {
  ids_.clear();
  prefix_.clear();
  read_index_ = 0;
}

Result<std::string> StreamDecoder::step(int32_t id) {
  ids_.push_back(id);
  tok::DecodeState st;
  auto text = impl_->decode(ids_, skip_special_, &st);
  if (!text.is_ok()) {
    ids_.pop_back();
    return text.status();
  }
  if (st.incomplete || text->size() <= prefix_.size() || text->compare(0, prefix_.size(), prefix_) != 0) return std::string();
  std::string out = text->substr(prefix_.size());
  // The tokens just emitted become the context of the next step.
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(read_index_));
  tok::DecodeState ignored;
  NB_ASSIGN_OR_RETURN(prefix_, impl_->decode(ids_, skip_special_, &ignored));
  read_index_ = ids_.size();
  return out;
}

Result<std::string> StreamDecoder::flush() {
  tok::DecodeState st;
  NB_ASSIGN_OR_RETURN(std::string text, impl_->decode(ids_, skip_special_, &st));
  size_t common = 0;
  while (common < prefix_.size() && common < text.size() && prefix_[common] == text[common]) ++common;
  std::string out = text.substr(common);
  reset();
  return out;
}

}  // namespace nb
