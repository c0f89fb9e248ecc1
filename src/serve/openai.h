// The OpenAI-compatible API's JSON: requests of /v1/completions and /v1/chat/completions parsed and
// validated into GenerateRequests, responses and stream chunks, and error bodies. No I/O here: the
// HTTP layer (http_server.cpp) reads bodies, calls these, and writes what they return.
//
// Validation follows the OpenAI API (ranges, types) and vLLM's extensions (top_k, min_p,
// stop_token_ids, ignore_eos, skip_special_tokens, include_stop_str_in_output, return_token_ids,
// chat_template_kwargs, add_generation_prompt). Every error names the field (`param`) and, for
// lengths, both numbers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "serve/service.h"

namespace nb {
class Tokenizer;
class ChatTemplate;
}  // namespace nb

namespace nb::serve {

// Ordered: responses list keys as OpenAI does, and chat messages keep the request's key order
// (transformers' tojson prints them in that order).
using Json = nlohmann::ordered_json;

// An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // "" -> null
  std::string code;   // "" -> null
};

ApiError bad_request(std::string message, std::string param = "");
ApiError not_found_error(std::string message, std::string param = "");
// kNotFound -> 404; kInvalidArgument, kOutOfRange, kFormat, kUnsupported, kIo -> 400; kUnavailable ->
// 503; others -> 500.
ApiError api_error_from(const Status& status, std::string param = "");
std::string error_json(const ApiError& error);

// A value or the ApiError that prevented it.
template <typename T>
class ApiResult {
 public:
  ApiResult(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  ApiResult(ApiError error) : v_(std::move(error)) {}  // NOLINT
  bool is_ok() const { return v_.index() == 0; }
  T& value() { return std::get<0>(v_); }
  const T& value() const { return std::get<0>(v_); }
  T* operator->() { return &value(); }
  T& operator*() { return value(); }
  const ApiError& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, ApiError> v_;
};

enum class Endpoint { kCompletions, kChat };

// Limits of one request.
inline constexpr int kMaxN = 128;              // `n`
inline constexpr int kMaxChoices = 1024;       // prompts x n
inline constexpr int kMaxLogprobs = 20;        // completions `logprobs`, chat `top_logprobs`
inline constexpr int kMaxStopStrings = 16;

// A completions or chat request as sent, validated for types and ranges but not yet tokenized.
struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;  // "" = the served (base) model

  // completions: one entry per prompt (text, or token ids when is_ids)
  struct Prompt {
    std::string text;
    std::vector<int32_t> ids;
    bool is_ids = false;
  };
  std::vector<Prompt> prompts;
  // chat
  Json messages = Json::array();
  Json tools;  // null or the request's array
  Json chat_template_kwargs = Json::object();
  bool add_generation_prompt = true;

  std::optional<int64_t> max_tokens;  // absent: completions 16, chat the rest of the context
  int n = 1;
  SamplingOptions sampling;  // sampling.logprobs: completions `logprobs`, chat `top_logprobs` (when `logprobs`)
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool echo = false;           // completions
  bool skip_special_tokens = true;
  bool include_stop_str_in_output = false;
  bool return_token_ids = false;
};

// Parses and checks a body: malformed JSON, wrong types (naming the field), values out of range,
// unsupported features. Token ids are checked against the vocabulary later (prepare_requests).
ApiResult<ApiRequest> parse_api_request(Endpoint endpoint, std::string_view body);

// What prepare_requests needs of the model.
struct PromptContext {
  const Tokenizer* tokenizer = nullptr;        // null: only token-id prompts work
  const ChatTemplate* chat_template = nullptr;  // null: chat is refused
  int max_model_len = 0;
  int64_t vocab_size = 0;
};

// The GenerateRequests of one API request: choice i is prompt i / n, sample i % n.
struct PreparedRequest {
  std::vector<std::vector<int32_t>> prompt_ids;  // per prompt
  std::vector<std::string> prompt_texts;         // per prompt (for echo; decoded for id prompts)
  std::vector<GenerateRequest> choices;
  std::vector<int32_t> stop_ids;                 // EOS (unless ignore_eos) + stop_token_ids
};

// Tokenizes (rendering the chat template for chat), checks lengths against the context
// ("This model's maximum context length is 512 tokens. However, you requested 600 tokens (590 in
// the prompt, 10 in the completion)"), fills max_tokens, stop ids, seeds (seed + sample index, so
// that the n samples differ) and the adapter.
ApiResult<PreparedRequest> prepare_requests(const ApiRequest& request, const PromptContext& context,
                                            const std::string& adapter);

// One generated token's log-probability, for the logprobs fields.
struct TokenLogprob {
  std::string token;  // the token's text
  float logprob = 0.f;
  std::vector<std::pair<std::string, float>> top;
};

// One finished choice, for the non-streaming responses.
struct ChoiceResult {
  std::string text;
  std::string finish_reason;  // "stop" | "length" | "abort"
  std::vector<int32_t> token_ids;
  std::vector<TokenLogprob> logprobs;  // when the request asked for them
  Json stop_reason;  // vLLM's field: the stop string or stop_token_ids id that ended it; null for EOS
};

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
};
Json usage_json(const Usage& usage);

// Response headers of one API request.
struct ResponseMeta {
  std::string id;  // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;
  std::string model;
};
std::string new_response_id(Endpoint endpoint);

// Non-streaming bodies. `results` are in choice order; prompt ids are repeated per choice when
// return_token_ids.
Json completion_response(const ApiRequest& request, const PreparedRequest& prepared,
                                   const ResponseMeta& meta, const std::vector<ChoiceResult>& results,
                                   const Usage& usage);
Json chat_response(const ApiRequest& request, const PreparedRequest& prepared, const ResponseMeta& meta,
                             const std::vector<ChoiceResult>& results, const Usage& usage);

// Logprobs in each endpoint's format. `text_offset` is the offset of the first token in the choice's
// text (completions' text_offset field).
Json completion_logprobs_json(const std::vector<TokenLogprob>& logprobs, size_t text_offset);
Json chat_logprobs_json(const std::vector<TokenLogprob>& logprobs);

// One stream chunk. First chat chunk of a choice: role_delta (delta {"role":"assistant","content":""}).
// `finish_reason` empty = null. `logprobs` null when not asked. `token_ids` only when return_token_ids.
struct ChunkChoice {
  int index = 0;
  std::string text;
  bool role_delta = false;
  std::string finish_reason;
  Json stop_reason;
  Json logprobs;  // null or the endpoint's logprobs object
  std::optional<std::vector<int32_t>> token_ids;
};
Json stream_chunk(Endpoint endpoint, const ResponseMeta& meta, const ChunkChoice& choice,
                            bool include_usage_field);
Json usage_chunk(Endpoint endpoint, const ResponseMeta& meta, const Usage& usage);
// "data: <json>\n\n"
std::string sse_event(const Json& data);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

}  // namespace nb::serve
