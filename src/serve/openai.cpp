#include "serve/openai.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <random>

#include "io/chat_template/chat_template.h"
#include "io/tokenizer/tokenizer.h"

namespace nb::serve {

using json = Json;

ApiError bad_request(std::string message, std::string param) {
  return ApiError{400, std::move(message), "invalid_request_error", std::move(param), ""};
}

ApiError not_found_error(std::string message, std::string param) {
  return ApiError{404, std::move(message), "not_found_error", std::move(param), "model_not_found"};
}

ApiError api_error_from(const Status& status, std::string param) {
  switch (status.code()) {
    case ErrorCode::kNotFound:
      return ApiError{404, status.message(), "not_found_error", std::move(param), ""};
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kOutOfRange:
    case ErrorCode::kFormat:
    case ErrorCode::kUnsupported:
    case ErrorCode::kIo:
      return bad_request(status.message(), std::move(param));
    case ErrorCode::kUnavailable:
      return ApiError{503, status.message(), "server_error", std::move(param), "unavailable"};
    default:
      return ApiError{500, status.message(), "server_error", std::move(param), ""};
  }
}

std::string error_json(const ApiError& e) {
  json err = {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

// Reads the typed fields of a request body; the first error wins.
class FieldReader {
 public:
  explicit FieldReader(const json& body) : body_(body) {}

  bool ok() const { return !error_; }
  ApiError take_error() { return std::move(*error_); }
  void fail(std::string message, const std::string& param) {
    if (!error_) error_ = bad_request(std::move(message), param);
  }
  // The field, or null when absent or JSON null.
  const json* get(const char* name) const {
    auto it = body_.find(name);
    if (it == body_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  void boolean(const char* name, bool* out) {
    const json* v = get(name);
    if (!v) return;
    if (!v->is_boolean()) return type_error(name, "a boolean", *v);
    *out = v->get<bool>();
  }
  // A finite number in [lo, hi] (lo excluded when lo_open).
  void number(const char* name, float* out, double lo, double hi, bool lo_open = false) {
    const json* v = get(name);
    if (!v) return;
    if (!v->is_number()) return type_error(name, "a number", *v);
    const double x = v->get<double>();
    if (!std::isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo))
      return fail(strformat("'%s' must be in %s%g, %g], got %g", name, lo_open ? "(" : "[", lo, hi, x), name);
    *out = static_cast<float>(x);
  }
  // An integer (or a number with an integral value) in [lo, hi].
  std::optional<int64_t> integer(const char* name, int64_t lo, int64_t hi) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    std::optional<int64_t> x = as_integer(*v);
    if (!x) {
      type_error(name, "an integer", *v);
      return std::nullopt;
    }
    if (*x < lo || *x > hi) {
      fail(strformat("'%s' must be in [%lld, %lld], got %lld", name, static_cast<long long>(lo),
                     static_cast<long long>(hi), static_cast<long long>(*x)),
           name);
      return std::nullopt;
    }
    return x;
  }
  void type_error(const std::string& name, const char* expected, const json& got) {
    fail(strformat("'%s' must be %s, got %s", name.c_str(), expected, describe(got).c_str()), name);
  }

  static std::optional<int64_t> as_integer(const json& v) {
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
      return static_cast<int64_t>(u);
    }
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return static_cast<int64_t>(d);
    }
    return std::nullopt;
  }
  static std::string describe(const json& v) {
    std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
    if (text.size() > 40) text = text.substr(0, 37) + "...";
    return strformat("%s %s", v.type_name(), text.c_str());
  }

 private:
  const json& body_;
  std::optional<ApiError> error_;
};

// prompt: "text" | ["a", "b"] | [1, 2, 3] | [[1, 2], [3]]
void read_prompts(FieldReader& r, ApiRequest* out) {
  const json* p = r.get("prompt");
  if (!p) return r.fail("'prompt' is required", "prompt");
  const char* shape = "a string, an array of strings, an array of token ids or an array of arrays of token ids";
  auto read_ids = [&](const json& arr, std::vector<int32_t>* ids) {
    for (const json& t : arr) {
      std::optional<int64_t> id = FieldReader::as_integer(t);
      if (!id || *id < 0 || *id > INT32_MAX) {
        r.fail(strformat("'prompt' token ids must be non-negative integers, got %s", FieldReader::describe(t).c_str()),
               "prompt");
        return;
      }
      ids->push_back(static_cast<int32_t>(*id));
    }
  };
  if (p->is_string()) {
    out->prompts.push_back({p->get<std::string>(), {}, false});
    return;
  }
  if (!p->is_array()) return r.type_error("prompt", shape, *p);
  if (p->empty()) return r.fail("'prompt' must not be an empty array", "prompt");
  const json& first = p->front();
  if (first.is_number()) {
    ApiRequest::Prompt prompt;
    prompt.is_ids = true;
    read_ids(*p, &prompt.ids);
    out->prompts.push_back(std::move(prompt));
    return;
  }
  for (const json& item : *p) {
    if (first.is_string() && item.is_string()) {
      out->prompts.push_back({item.get<std::string>(), {}, false});
    } else if (first.is_array() && item.is_array()) {
      ApiRequest::Prompt prompt;
      prompt.is_ids = true;
      read_ids(item, &prompt.ids);
      out->prompts.push_back(std::move(prompt));
    } else {
      return r.type_error("prompt", shape, *p);
    }
  }
}

// messages: [{"role": "user", "content": "text" | [{"type": "text", "text": "..."}] | null}, ...]
void read_messages(FieldReader& r, ApiRequest* out) {
  const json* m = r.get("messages");
  if (!m) return r.fail("'messages' is required", "messages");
  if (!m->is_array()) return r.type_error("messages", "an array of messages", *m);
  if (m->empty()) return r.fail("'messages' must not be empty", "messages");
  json ordered = *m;
  for (size_t i = 0; i < ordered.size(); ++i) {
    json& msg = ordered[i];
    const std::string where = strformat("messages[%zu]", i);
    if (!msg.is_object()) return r.type_error(where, "an object", (*m)[i]);
    auto role = msg.find("role");
    if (role == msg.end() || !role->is_string())
      return r.fail(strformat("'%s.role' must be a string", where.c_str()), where + ".role");
    auto content = msg.find("content");
    if (content == msg.end() || content->is_null() || content->is_string()) continue;
    if (!content->is_array())
      return r.fail(strformat("'%s.content' must be a string or an array of text parts", where.c_str()),
                    where + ".content");
    std::string text;
    for (const json& part : *content) {
      auto type = part.is_object() ? part.find("type") : part.end();
      auto part_text = part.is_object() ? part.find("text") : part.end();
      if (type == part.end() || *type != "text" || part_text == part.end() || !part_text->is_string())
        return r.fail(strformat("'%s.content': only parts {\"type\": \"text\", \"text\": ...} are supported", where.c_str()),
                      where + ".content");
      if (!text.empty()) text += "\n";
      text += part_text->get<std::string>();
    }
    *content = text;
  }
  out->messages = std::move(ordered);
  if (const json* tools = r.get("tools")) {
    if (!tools->is_array()) return r.type_error("tools", "an array", *tools);
    out->tools = *tools;
  }
  if (const json* kw = r.get("chat_template_kwargs")) {
    if (!kw->is_object()) return r.type_error("chat_template_kwargs", "an object", *kw);
    out->chat_template_kwargs = *kw;
  }
  r.boolean("add_generation_prompt", &out->add_generation_prompt);
}

void read_stop(FieldReader& r, ApiRequest* out) {
  if (const json* s = r.get("stop")) {
    if (s->is_string()) {
      out->stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      for (const json& item : *s) {
        if (!item.is_string()) return r.type_error("stop", "a string or an array of strings", *s);
        out->stop.push_back(item.get<std::string>());
      }
    } else {
      return r.type_error("stop", "a string or an array of strings", *s);
    }
    if (out->stop.size() > static_cast<size_t>(kMaxStopStrings))
      return r.fail(strformat("'stop' may hold at most %d strings, got %zu", kMaxStopStrings, out->stop.size()), "stop");
    for (const std::string& s : out->stop)
      if (s.empty()) return r.fail("'stop' strings must not be empty", "stop");
  }
  if (const json* ids = r.get("stop_token_ids")) {
    if (!ids->is_array()) return r.type_error("stop_token_ids", "an array of token ids", *ids);
    for (const json& t : *ids) {
      std::optional<int64_t> id = FieldReader::as_integer(t);
      if (!id || *id < 0 || *id > INT32_MAX) return r.type_error("stop_token_ids", "an array of token ids", *ids);
      out->stop_token_ids.push_back(static_cast<int32_t>(*id));
    }
  }
}

void read_sampling(FieldReader& r, ApiRequest* out) {
  SamplingOptions& s = out->sampling;
  r.number("temperature", &s.temperature, 0, 2);
  r.number("top_p", &s.top_p, 0, 1, /*lo_open=*/true);
  if (auto k = r.integer("top_k", -1, INT32_MAX)) s.top_k = *k <= 0 ? 0 : static_cast<int>(*k);
  r.number("min_p", &s.min_p, 0, 1);
  r.number("presence_penalty", &s.presence_penalty, -2, 2);
  r.number("frequency_penalty", &s.frequency_penalty, -2, 2);
  if (const json* seed = r.get("seed")) {
    if (seed->is_number_unsigned()) {
      s.seed = seed->get<uint64_t>();
    } else if (seed->is_number_integer()) {
      s.seed = static_cast<uint64_t>(seed->get<int64_t>());
    } else {
      r.type_error("seed", "an integer", *seed);
    }
  }
  if (const json* rp = r.get("repetition_penalty"); rp && !(rp->is_number() && rp->get<double>() == 1.0))
    r.fail("'repetition_penalty' is not supported (use presence_penalty / frequency_penalty)", "repetition_penalty");
}

void read_unsupported(FieldReader& r, Endpoint endpoint) {
  if (const json* b = r.get("logit_bias"); b && !(b->is_object() && b->empty()))
    r.fail("'logit_bias' is not supported", "logit_bias");
  if (const json* b = r.get("best_of"); b && !(FieldReader::as_integer(*b) == 1))
    r.fail("'best_of' other than 1 is not supported", "best_of");
  if (endpoint == Endpoint::kCompletions && r.get("suffix")) r.fail("'suffix' is not supported", "suffix");
  if (const json* f = r.get("response_format")) {
    if (!f->is_object() || f->value("type", "") != "text")
      r.fail("'response_format' other than {\"type\": \"text\"} is not supported", "response_format");
  }
}

void read_logprobs(FieldReader& r, ApiRequest* out) {
  if (out->endpoint == Endpoint::kCompletions) {
    if (auto k = r.integer("logprobs", 0, kMaxLogprobs)) out->sampling.logprobs = static_cast<int>(*k);
    return;
  }
  bool want = false;
  r.boolean("logprobs", &want);
  std::optional<int64_t> top = r.integer("top_logprobs", 0, kMaxLogprobs);
  if (top && !want) return r.fail("'top_logprobs' needs 'logprobs': true", "top_logprobs");
  if (want) out->sampling.logprobs = static_cast<int>(top.value_or(0));
}

}  // namespace

ApiResult<ApiRequest> parse_api_request(Endpoint endpoint, std::string_view body) {
  json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Say where: parse again with exceptions for nlohmann's message (byte offset, token).
    std::string where;
    try {
      json again = json::parse(body.begin(), body.end());
      (void)again;
    } catch (const json::exception& e) {
      where = e.what();
    }
    return bad_request("the request body is not valid JSON: " + where);
  }
  if (!j.is_object()) return bad_request("the request body must be a JSON object, got " + std::string(j.type_name()));
  ApiRequest req;
  req.endpoint = endpoint;
  FieldReader r(j);
  if (const json* m = r.get("model")) {
    if (!m->is_string()) r.type_error("model", "a string", *m);
    else req.model = m->get<std::string>();
  }
  if (endpoint == Endpoint::kCompletions) read_prompts(r, &req);
  else read_messages(r, &req);
  // max_completion_tokens replaces max_tokens in the chat API; either is accepted on both.
  std::optional<int64_t> mt = r.integer("max_tokens", INT64_MIN, INT64_MAX);
  std::optional<int64_t> mct = r.integer("max_completion_tokens", INT64_MIN, INT64_MAX);
  if (mct) mt = mct;
  if (mt && *mt < 1)
    r.fail(strformat("'%s' must be at least 1, got %lld", mct ? "max_completion_tokens" : "max_tokens",
                     static_cast<long long>(*mt)),
           mct ? "max_completion_tokens" : "max_tokens");
  req.max_tokens = mt;
  if (auto n = r.integer("n", 1, kMaxN)) req.n = static_cast<int>(*n);
  read_sampling(r, &req);
  read_logprobs(r, &req);
  read_stop(r, &req);
  read_unsupported(r, endpoint);
  r.boolean("ignore_eos", &req.ignore_eos);
  r.boolean("stream", &req.stream);
  if (const json* so = r.get("stream_options")) {
    if (!so->is_object()) {
      r.type_error("stream_options", "an object", *so);
    } else if (!req.stream) {
      r.fail("'stream_options' is only allowed when 'stream' is true", "stream_options");
    } else if (auto iu = so->find("include_usage"); iu != so->end() && !iu->is_null()) {
      if (!iu->is_boolean()) r.type_error("stream_options.include_usage", "a boolean", *iu);
      else req.include_usage = iu->get<bool>();
    }
  }
  if (endpoint == Endpoint::kCompletions) r.boolean("echo", &req.echo);
  r.boolean("skip_special_tokens", &req.skip_special_tokens);
  r.boolean("include_stop_str_in_output", &req.include_stop_str_in_output);
  r.boolean("return_token_ids", &req.return_token_ids);
  if (!r.ok()) return r.take_error();
  if (req.echo && req.sampling.logprobs >= 0)
    return bad_request("'echo' with 'logprobs' needs prompt log-probabilities, which nibble does not compute", "echo");
  const size_t choices = (endpoint == Endpoint::kChat ? 1 : req.prompts.size()) * static_cast<size_t>(req.n);
  if (choices > static_cast<size_t>(kMaxChoices))
    return bad_request(strformat("prompts x n = %zu choices; at most %d are allowed per request", choices, kMaxChoices), "n");
  return req;
}

namespace {

ApiError context_error(int max_len, int64_t prompt, int64_t completion, const char* what) {
  if (completion <= 0)
    return bad_request(strformat("This model's maximum context length is %d tokens. However, your %s has %lld tokens, "
                                 "which leaves no room for a completion.",
                                 max_len, what, static_cast<long long>(prompt)),
                       what[0] == 'm' ? "messages" : "prompt");
  return bad_request(strformat("This model's maximum context length is %d tokens. However, you requested %lld tokens "
                               "(%lld in the %s, %lld in the completion). Please reduce the length of the %s or "
                               "completion.",
                               max_len, static_cast<long long>(prompt + completion), static_cast<long long>(prompt), what,
                               static_cast<long long>(completion), what),
                     "max_tokens");
}

ApiResult<std::vector<int32_t>> tokenize_prompt(const ApiRequest::Prompt& p, const PromptContext& ctx) {
  if (p.is_ids) {
    for (int32_t id : p.ids)
      if (id >= ctx.vocab_size)
        return bad_request(strformat("token id %d in 'prompt' is out of range [0, %lld)", id,
                                     static_cast<long long>(ctx.vocab_size)),
                           "prompt");
    return p.ids;
  }
  if (!ctx.tokenizer) return bad_request("this model has no tokenizer.json: send 'prompt' as token ids", "prompt");
  Result<std::vector<int32_t>> ids = ctx.tokenizer->encode(p.text, /*add_special_tokens=*/true);
  if (!ids.is_ok()) return api_error_from(ids.status(), "prompt");
  return std::move(ids).value();
}

ApiResult<std::vector<int32_t>> render_chat(const ApiRequest& req, const PromptContext& ctx, std::string* text) {
  if (!ctx.tokenizer) return bad_request("this model has no tokenizer.json, so chat is not available", "messages");
  if (!ctx.chat_template)
    return bad_request("this model has no chat template (start nibble serve with --chat-template FILE)", "messages");
  Result<std::string> rendered = ctx.chat_template->render_chat(req.messages, req.tools, req.add_generation_prompt,
                                                                req.chat_template_kwargs);
  if (!rendered.is_ok()) return bad_request("chat template: " + rendered.status().message(), "messages");
  *text = *rendered;
  // The template writes BOS itself, as transformers' apply_chat_template(tokenize=True) assumes.
  Result<std::vector<int32_t>> ids = ctx.tokenizer->encode(*rendered, /*add_special_tokens=*/false);
  if (!ids.is_ok()) return api_error_from(ids.status(), "messages");
  return std::move(ids).value();
}

}  // namespace

ApiResult<PreparedRequest> prepare_requests(const ApiRequest& req, const PromptContext& ctx, const std::string& adapter) {
  PreparedRequest out;
  const bool chat = req.endpoint == Endpoint::kChat;
  if (chat) {
    std::string text;
    ApiResult<std::vector<int32_t>> ids = render_chat(req, ctx, &text);
    if (!ids.is_ok()) return ids.error();
    out.prompt_ids.push_back(std::move(*ids));
    out.prompt_texts.push_back(std::move(text));
  } else {
    for (const ApiRequest::Prompt& p : req.prompts) {
      ApiResult<std::vector<int32_t>> ids = tokenize_prompt(p, ctx);
      if (!ids.is_ok()) return ids.error();
      std::string text = p.text;
      if (p.is_ids && req.echo && ctx.tokenizer) {
        Result<std::string> decoded = ctx.tokenizer->decode(p.ids);
        if (decoded.is_ok()) text = *decoded;
      }
      out.prompt_ids.push_back(std::move(*ids));
      out.prompt_texts.push_back(std::move(text));
    }
  }
  const char* what = chat ? "messages" : "prompt";
  for (int32_t id : req.stop_token_ids)
    if (id >= ctx.vocab_size)
      return bad_request(strformat("token id %d in 'stop_token_ids' is out of range [0, %lld)", id,
                                   static_cast<long long>(ctx.vocab_size)),
                         "stop_token_ids");
  if (ctx.tokenizer && !req.ignore_eos) out.stop_ids = ctx.tokenizer->eos_ids();
  for (int32_t id : req.stop_token_ids)
    if (std::find(out.stop_ids.begin(), out.stop_ids.end(), id) == out.stop_ids.end()) out.stop_ids.push_back(id);

  for (size_t p = 0; p < out.prompt_ids.size(); ++p) {
    const int64_t plen = static_cast<int64_t>(out.prompt_ids[p].size());
    if (plen == 0) return bad_request(strformat("the %s is empty (0 tokens)", what), what);
    const int64_t room = ctx.max_model_len - plen;
    if (room <= 0) return context_error(ctx.max_model_len, plen, 0, what);
    int64_t max_tokens = 0;
    if (req.max_tokens) {
      max_tokens = *req.max_tokens;
      if (max_tokens > room) return context_error(ctx.max_model_len, plen, max_tokens, what);
    } else {
      max_tokens = chat ? room : std::min<int64_t>(16, room);  // OpenAI's completions default: 16
    }
    for (int i = 0; i < req.n; ++i) {
      GenerateRequest g;
      g.prompt = out.prompt_ids[p];
      g.adapter = adapter;
      g.max_tokens = static_cast<int>(max_tokens);
      g.sampling = req.sampling;
      if (g.sampling.seed) g.sampling.seed = *g.sampling.seed + static_cast<uint64_t>(i);
      g.stop_ids = out.stop_ids;
      out.choices.push_back(std::move(g));
    }
  }
  return out;
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

std::string new_response_id(Endpoint endpoint) {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}() ^
                                   static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
  return strformat("%s-%016llx%04llx", endpoint == Endpoint::kChat ? "chatcmpl" : "cmpl",
                   static_cast<unsigned long long>(rng()), static_cast<unsigned long long>(counter++ & 0xffff));
}

namespace {

// -inf (a token the sampler could never pick) has no JSON number; vLLM writes -9999.0.
double finite_logprob(float lp) { return std::isfinite(lp) ? static_cast<double>(lp) : -9999.0; }

json token_bytes(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}

}  // namespace

json completion_logprobs_json(const std::vector<TokenLogprob>& lps, size_t text_offset) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
  size_t offset = text_offset;
  for (const TokenLogprob& t : lps) {
    tokens.push_back(t.token);
    token_logprobs.push_back(finite_logprob(t.logprob));
    json alts = json::object();
    for (const auto& [text, lp] : t.top)
      if (!alts.contains(text)) alts[text] = finite_logprob(lp);
    top.push_back(std::move(alts));
    offsets.push_back(offset);
    offset += t.token.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
}

json chat_logprobs_json(const std::vector<TokenLogprob>& lps) {
  json content = json::array();
  for (const TokenLogprob& t : lps) {
    json top = json::array();
    for (const auto& [text, lp] : t.top)
      top.push_back({{"token", text}, {"logprob", finite_logprob(lp)}, {"bytes", token_bytes(text)}});
    content.push_back(
        {{"token", t.token}, {"logprob", finite_logprob(t.logprob)}, {"bytes", token_bytes(t.token)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

json completion_response(const ApiRequest& req, const PreparedRequest& prep, const ResponseMeta& meta,
                         const std::vector<ChoiceResult>& results, const Usage& usage) {
  json choices = json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    const ChoiceResult& r = results[i];
    const size_t prompt = i / static_cast<size_t>(req.n);
    const std::string prefix = req.echo ? prep.prompt_texts[prompt] : std::string();
    json c = {{"index", i},
              {"text", prefix + r.text},
              {"logprobs", req.sampling.logprobs >= 0 ? completion_logprobs_json(r.logprobs, prefix.size()) : json(nullptr)},
              {"finish_reason", r.finish_reason},
              {"stop_reason", r.stop_reason}};
    if (req.return_token_ids) {
      c["prompt_token_ids"] = prep.prompt_ids[prompt];
      c["token_ids"] = r.token_ids;
    }
    choices.push_back(std::move(c));
  }
  return {{"id", meta.id},           {"object", "text_completion"}, {"created", meta.created},
          {"model", meta.model},     {"choices", choices},          {"usage", usage_json(usage)}};
}

json chat_response(const ApiRequest& req, const PreparedRequest& prep, const ResponseMeta& meta,
                   const std::vector<ChoiceResult>& results, const Usage& usage) {
  json choices = json::array();
  for (size_t i = 0; i < results.size(); ++i) {
    const ChoiceResult& r = results[i];
    json c = {{"index", i},
              {"message", {{"role", "assistant"}, {"content", r.text}}},
              {"logprobs", req.sampling.logprobs >= 0 ? chat_logprobs_json(r.logprobs) : json(nullptr)},
              {"finish_reason", r.finish_reason},
              {"stop_reason", r.stop_reason}};
    if (req.return_token_ids) {
      c["prompt_token_ids"] = prep.prompt_ids[0];
      c["token_ids"] = r.token_ids;
    }
    choices.push_back(std::move(c));
  }
  return {{"id", meta.id},       {"object", "chat.completion"}, {"created", meta.created},
          {"model", meta.model}, {"choices", choices},          {"usage", usage_json(usage)}};
}

json stream_chunk(Endpoint endpoint, const ResponseMeta& meta, const ChunkChoice& c, bool include_usage_field) {
  json choice = {{"index", c.index}};
  if (endpoint == Endpoint::kChat) {
    json delta = json::object();
    if (c.role_delta) delta["role"] = "assistant";
    if (c.role_delta || !c.text.empty()) delta["content"] = c.text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = c.text;
  }
  choice["logprobs"] = c.logprobs;
  choice["finish_reason"] = c.finish_reason.empty() ? json(nullptr) : json(c.finish_reason);
  if (!c.finish_reason.empty()) choice["stop_reason"] = c.stop_reason;
  if (c.token_ids) choice["token_ids"] = *c.token_ids;
  json chunk = {{"id", meta.id},
                {"object", endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion"},
                {"created", meta.created},
                {"model", meta.model},
                {"choices", json::array({choice})}};
  if (include_usage_field) chunk["usage"] = nullptr;
  return chunk;
}

json usage_chunk(Endpoint endpoint, const ResponseMeta& meta, const Usage& usage) {
  return {{"id", meta.id},
          {"object", endpoint == Endpoint::kChat ? "chat.completion.chunk" : "text_completion"},
          {"created", meta.created},
          {"model", meta.model},
          {"choices", json::array()},
          {"usage", usage_json(usage)}};
}

std::string sse_event(const json& data) {
  return "data: " + data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

}  // namespace nb::serve
