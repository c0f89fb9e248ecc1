// Request parsing and validation (every field's type and range errors name the field), preparing
// GenerateRequests from text, token ids and chat messages (the demo model's tokenizer and
// template), and the response / chunk / error JSON.
#include "serve/openai.h"

#include <gtest/gtest.h>

#include "io/chat_template/chat_template.h"
#include "io/tokenizer/tokenizer.h"

namespace nb::serve {
namespace {

const std::string kDemo = std::string(NIBBLE_SOURCE_DIR) + "/models/demo";

ApiRequest parse_ok(Endpoint e, const std::string& body) {
  ApiResult<ApiRequest> r = parse_api_request(e, body);
  EXPECT_TRUE(r.is_ok()) << body << " -> " << (r.is_ok() ? "" : r.error().message);
  return r.is_ok() ? r.value() : ApiRequest{};
}

ApiError parse_error(Endpoint e, const std::string& body) {
  ApiResult<ApiRequest> r = parse_api_request(e, body);
  EXPECT_FALSE(r.is_ok()) << body << " was accepted";
  return r.is_ok() ? ApiError{} : r.error();
}

TEST(OpenAiParse, CompletionDefaultsAndFields) {
  ApiRequest r = parse_ok(Endpoint::kCompletions, R"({"model": "kjv", "prompt": "Hello"})");
  EXPECT_EQ(r.model, "kjv");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "Hello");
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_EQ(r.n, 1);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.f);
  EXPECT_EQ(r.sampling.logprobs, -1);
  EXPECT_FALSE(r.stream);

  r = parse_ok(Endpoint::kCompletions,
               R"({"prompt": "x", "max_tokens": 7, "temperature": 0, "top_p": 0.5, "top_k": 3, "min_p": 0.1,
                   "seed": 42, "stop": "\n", "stop_token_ids": [5, 6], "n": 2, "logprobs": 2, "presence_penalty": 1,
                   "frequency_penalty": -1.5, "ignore_eos": true, "stream": true,
                   "stream_options": {"include_usage": true}, "return_token_ids": true})");
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 3);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.1f);
  EXPECT_EQ(r.sampling.seed, 42u);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(r.stop_token_ids, (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.sampling.logprobs, 2);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 1.f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -1.5f);
  EXPECT_TRUE(r.ignore_eos && r.stream && r.include_usage && r.return_token_ids);
  EXPECT_TRUE(parse_ok(Endpoint::kCompletions, R"({"prompt": "x", "echo": true})").echo);
}

TEST(OpenAiParse, PromptShapes) {
  ApiRequest r = parse_ok(Endpoint::kCompletions, R"({"prompt": [1, 2, 3]})");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_TRUE(r.prompts[0].is_ids);
  EXPECT_EQ(r.prompts[0].ids, (std::vector<int32_t>{1, 2, 3}));
  r = parse_ok(Endpoint::kCompletions, R"({"prompt": ["a", "b"]})");
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.prompts[1].text, "b");
  r = parse_ok(Endpoint::kCompletions, R"({"prompt": [[1], [2, 3]]})");
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.prompts[1].ids, (std::vector<int32_t>{2, 3}));
  for (const char* bad : {R"({"prompt": 5})", R"({"prompt": []})", R"({"prompt": ["a", 1]})", R"({"prompt": [1, -2]})",
                          R"({"prompt": [[1], "a"]})", R"({"prompt": [1.5]})", R"({})"}) {
    ApiError e = parse_error(Endpoint::kCompletions, bad);
    EXPECT_EQ(e.status, 400) << bad;
    EXPECT_EQ(e.param, "prompt") << bad;
  }
}

TEST(OpenAiParse, MalformedJsonAndNonObjects) {
  for (const char* bad : {"{bad", "", "[1, 2]", "\"text\"", R"({"prompt": NaN})", R"({"prompt": "x", "temperature": 1e999})"}) {
    ApiError e = parse_error(Endpoint::kCompletions, bad);
    EXPECT_EQ(e.status, 400) << bad;
    EXPECT_EQ(e.type, "invalid_request_error");
  }
  EXPECT_NE(parse_error(Endpoint::kCompletions, "{bad").message.find("not valid JSON"), std::string::npos);
}

TEST(OpenAiParse, TypeErrorsNameTheField) {
  struct Case {
    const char* body;
    const char* param;
  };
  for (const Case& c : {Case{R"({"prompt": "x", "model": 3})", "model"},
                        Case{R"({"prompt": "x", "temperature": "hot"})", "temperature"},
                        Case{R"({"prompt": "x", "max_tokens": "10"})", "max_tokens"},
                        Case{R"({"prompt": "x", "max_tokens": 2.5})", "max_tokens"},
                        Case{R"({"prompt": "x", "n": true})", "n"},
                        Case{R"({"prompt": "x", "stream": "yes"})", "stream"},
                        Case{R"({"prompt": "x", "stop": 5})", "stop"},
                        Case{R"({"prompt": "x", "stop": ["a", 1]})", "stop"},
                        Case{R"({"prompt": "x", "stop_token_ids": "1"})", "stop_token_ids"},
                        Case{R"({"prompt": "x", "seed": "1"})", "seed"},
                        Case{R"({"prompt": "x", "logprobs": true})", "logprobs"},
                        Case{R"({"prompt": "x", "echo": 1})", "echo"},
                        Case{R"({"prompt": "x", "ignore_eos": "no"})", "ignore_eos"},
                        Case{R"({"prompt": "x", "stream": true, "stream_options": []})", "stream_options"},
                        Case{R"({"prompt": "x", "top_k": 1.5})", "top_k"}}) {
    ApiError e = parse_error(Endpoint::kCompletions, c.body);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
    EXPECT_NE(e.message.find(c.param), std::string::npos) << e.message;
  }
  // An integral float is an integer (pydantic's lax mode, as vLLM accepts it).
  EXPECT_EQ(parse_ok(Endpoint::kCompletions, R"({"prompt": "x", "max_tokens": 16.0})").max_tokens, 16);
}

TEST(OpenAiParse, RangeErrors) {
  struct Case {
    const char* body;
    const char* param;
  };
  for (const Case& c : {Case{R"({"prompt": "x", "temperature": -0.1})", "temperature"},
                        Case{R"({"prompt": "x", "temperature": 2.5})", "temperature"},
                        Case{R"({"prompt": "x", "top_p": 0})", "top_p"},
                        Case{R"({"prompt": "x", "top_p": 1.01})", "top_p"},
                        Case{R"({"prompt": "x", "top_k": -2})", "top_k"},
                        Case{R"({"prompt": "x", "min_p": 1.5})", "min_p"},
                        Case{R"({"prompt": "x", "presence_penalty": 2.1})", "presence_penalty"},
                        Case{R"({"prompt": "x", "frequency_penalty": -3})", "frequency_penalty"},
                        Case{R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
                        Case{R"({"prompt": "x", "max_tokens": -5})", "max_tokens"},
                        Case{R"({"prompt": "x", "n": 0})", "n"},
                        Case{R"({"prompt": "x", "n": 129})", "n"},
                        Case{R"({"prompt": "x", "logprobs": 21})", "logprobs"},
                        Case{R"({"prompt": "x", "stop": [""]})", "stop"},
                        Case{R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options"},
                        Case{R"({"prompt": "x", "logit_bias": {"1": 5}})", "logit_bias"},
                        Case{R"({"prompt": "x", "best_of": 3})", "best_of"},
                        Case{R"({"prompt": "x", "suffix": "y"})", "suffix"},
                        Case{R"({"prompt": "x", "echo": true, "logprobs": 1})", "echo"}}) {
    ApiError e = parse_error(Endpoint::kCompletions, c.body);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.message;
  }
  // top_k -1 and 0 both mean off (vLLM uses -1).
  EXPECT_EQ(parse_ok(Endpoint::kCompletions, R"({"prompt": "x", "top_k": -1})").sampling.top_k, 0);
  // Nulls are absent fields.
  EXPECT_FLOAT_EQ(parse_ok(Endpoint::kCompletions, R"({"prompt": "x", "temperature": null})").sampling.temperature, 1.f);
}

TEST(OpenAiParse, Chat) {
  ApiRequest r = parse_ok(Endpoint::kChat,
                          R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                        {"type": "text", "text": "b"}]}],
                              "max_completion_tokens": 5, "max_tokens": 9, "logprobs": true, "top_logprobs": 3})");
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0]["content"], "a\nb");
  EXPECT_EQ(r.max_tokens, 5);  // max_completion_tokens wins
  EXPECT_EQ(r.sampling.logprobs, 3);
  EXPECT_EQ(parse_ok(Endpoint::kChat, R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})")
                .sampling.logprobs,
            0);
  struct Case {
    const char* body;
    const char* param;
  };
  for (const Case& c : {Case{R"({})", "messages"}, Case{R"({"messages": []})", "messages"},
                        Case{R"({"messages": "hi"})", "messages"}, Case{R"({"messages": [1]})", "messages[0]"},
                        Case{R"({"messages": [{"content": "x"}]})", "messages[0].role"},
                        Case{R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", "messages[0].content"},
                        Case{R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", "top_logprobs"},
                        Case{R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 2})", "logprobs"},
                        Case{R"({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}})",
                             "response_format"}}) {
    ApiError e = parse_error(Endpoint::kChat, c.body);
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.message;
  }
}

class OpenAiPrepare : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto t = Tokenizer::load(kDemo);
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    tokenizer_ = new Tokenizer(std::move(t).value());
    auto c = load_chat_template(kDemo);
    ASSERT_TRUE(c.is_ok()) << c.status().to_string();
    template_ = new ChatTemplate(std::move(c).value());
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete template_;
  }
  PromptContext context() const { return PromptContext{tokenizer_, template_, 64, 4096}; }
  ApiResult<PreparedRequest> prepare(Endpoint e, const std::string& body, const std::string& adapter = "") {
    return prepare_requests(parse_ok(e, body), context(), adapter);
  }
  static Tokenizer* tokenizer_;
  static ChatTemplate* template_;
};
Tokenizer* OpenAiPrepare::tokenizer_ = nullptr;
ChatTemplate* OpenAiPrepare::template_ = nullptr;

TEST_F(OpenAiPrepare, TextPromptDefaultsAndStopIds) {
  auto p = prepare(Endpoint::kCompletions, R"({"prompt": " Hello world", "seed": 7, "n": 3, "stop_token_ids": [9]})", "kjv");
  ASSERT_TRUE(p.is_ok()) << p.error().message;
  ASSERT_EQ(p->choices.size(), 3u);
  EXPECT_EQ(p->prompt_ids[0], (std::vector<int32_t>{671, 282, 81, 1053}));
  for (size_t i = 0; i < 3; ++i) {
    const GenerateRequest& g = p->choices[i];
    EXPECT_EQ(g.prompt, p->prompt_ids[0]);
    EXPECT_EQ(g.adapter, "kjv");
    EXPECT_EQ(g.max_tokens, 16);  // OpenAI's completions default
    EXPECT_EQ(g.sampling.seed, 7 + i);  // the n samples differ
    EXPECT_EQ(g.stop_ids, (std::vector<int32_t>{0, 9}));  // EOS (<|endoftext|>) + stop_token_ids
  }
  p = prepare(Endpoint::kCompletions, R"({"prompt": [5, 6], "ignore_eos": true})");
  ASSERT_TRUE(p.is_ok());
  EXPECT_TRUE(p->choices[0].stop_ids.empty());
}

TEST_F(OpenAiPrepare, ChatRendersTheTemplate) {
  auto p = prepare(Endpoint::kChat, R"({"messages": [{"role": "user", "content": "Hi"}]})");
  ASSERT_TRUE(p.is_ok()) << p.error().message;
  EXPECT_EQ(p->prompt_texts[0], "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  auto ids = tokenizer_->encode(p->prompt_texts[0], false);
  ASSERT_TRUE(ids.is_ok());
  EXPECT_EQ(p->prompt_ids[0], *ids);
  EXPECT_EQ(p->choices[0].max_tokens, 64 - static_cast<int>(ids->size()));  // chat default: the rest of the context
  // Without a template, chat is refused (and says how to get one).
  PromptContext no_template = context();
  no_template.chat_template = nullptr;
  auto refused = prepare_requests(parse_ok(Endpoint::kChat, R"({"messages": [{"role": "user", "content": "Hi"}]})"),
                                  no_template, "");
  ASSERT_FALSE(refused.is_ok());
  EXPECT_NE(refused.error().message.find("--chat-template"), std::string::npos);
}

TEST_F(OpenAiPrepare, ContextLengthErrorsNameBothNumbers) {
  std::string long_prompt = "[";
  for (int i = 0; i < 70; ++i) long_prompt.append(i ? "," : "").append(std::to_string(10 + i));
  long_prompt += "]";
  auto p = prepare(Endpoint::kCompletions, R"({"prompt": )" + long_prompt + "}");
  ASSERT_FALSE(p.is_ok());
  EXPECT_EQ(p.error().status, 400);
  EXPECT_NE(p.error().message.find("64"), std::string::npos) << p.error().message;
  EXPECT_NE(p.error().message.find("70"), std::string::npos) << p.error().message;

  p = prepare(Endpoint::kCompletions, R"({"prompt": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "max_tokens": 60})");
  ASSERT_FALSE(p.is_ok());
  EXPECT_EQ(p.error().param, "max_tokens");
  EXPECT_NE(p.error().message.find("maximum context length is 64 tokens"), std::string::npos) << p.error().message;
  EXPECT_NE(p.error().message.find("70 tokens (10 in the prompt, 60 in the completion)"), std::string::npos)
      << p.error().message;
  // Exactly full is fine; the completions default shrinks to fit.
  EXPECT_TRUE(prepare(Endpoint::kCompletions, R"({"prompt": [1, 2, 3, 4], "max_tokens": 60})").is_ok());
  auto fit = prepare(Endpoint::kCompletions, R"({"prompt": )" + long_prompt.substr(0, long_prompt.find(",60")) + "]}");
  ASSERT_TRUE(fit.is_ok()) << fit.error().message;
  EXPECT_EQ(fit->choices[0].max_tokens, 64 - static_cast<int>(fit->prompt_ids[0].size()));
}

TEST_F(OpenAiPrepare, TokenIdsAreChecked) {
  auto p = prepare(Endpoint::kCompletions, R"({"prompt": [1, 4096]})");
  ASSERT_FALSE(p.is_ok());
  EXPECT_NE(p.error().message.find("4096"), std::string::npos);
  p = prepare(Endpoint::kCompletions, R"({"prompt": [1], "stop_token_ids": [99999]})");
  ASSERT_FALSE(p.is_ok());
  EXPECT_EQ(p.error().param, "stop_token_ids");
  p = prepare(Endpoint::kCompletions, R"({"prompt": ""})");
  ASSERT_FALSE(p.is_ok());
  EXPECT_NE(p.error().message.find("empty"), std::string::npos);
  // Without a tokenizer only ids work.
  PromptContext no_tok{nullptr, nullptr, 64, 4096};
  EXPECT_TRUE(prepare_requests(parse_ok(Endpoint::kCompletions, R"({"prompt": [1, 2]})"), no_tok, "").is_ok());
  EXPECT_FALSE(prepare_requests(parse_ok(Endpoint::kCompletions, R"({"prompt": "hi"})"), no_tok, "").is_ok());
}

TEST(OpenAiJson, ErrorBody) {
  Json j = Json::parse(error_json(bad_request("'n' must be in [1, 128], got 0", "n")));
  EXPECT_EQ(j["error"]["message"], "'n' must be in [1, 128], got 0");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "n");
  EXPECT_TRUE(j["error"]["code"].is_null());
  j = Json::parse(error_json(api_error_from(not_found("adapter 'x' is not loaded"))));
  EXPECT_EQ(j["error"]["type"], "not_found_error");
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_EQ(api_error_from(not_found("x")).status, 404);
  EXPECT_EQ(api_error_from(out_of_range("x")).status, 400);
  EXPECT_EQ(api_error_from(unavailable("x")).status, 503);
  EXPECT_EQ(api_error_from(internal_error("x")).status, 500);
}

TEST(OpenAiJson, ResponsesAndChunks) {
  ApiRequest req = parse_ok(Endpoint::kCompletions, R"({"prompt": "ab", "echo": true, "n": 2, "return_token_ids": true})");
  PreparedRequest prep;
  prep.prompt_ids = {{1, 2}};
  prep.prompt_texts = {"ab"};
  ResponseMeta meta{"cmpl-1", 123, "demo"};
  std::vector<ChoiceResult> results = {{"cd", "stop", {3, 4}, {}, "\n"}, {"ef", "length", {5, 6}, {}, nullptr}};
  Json j = completion_response(req, prep, meta, results, Usage{2, 4});
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "abcd");  // echo
  EXPECT_EQ(j["choices"][0]["stop_reason"], "\n");
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][1]["token_ids"], Json::parse("[5, 6]"));
  EXPECT_EQ(j["choices"][1]["prompt_token_ids"], Json::parse("[1, 2]"));
  EXPECT_EQ(j["usage"]["total_tokens"], 6);

  ApiRequest chat = parse_ok(Endpoint::kChat, R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 1})");
  std::vector<ChoiceResult> cr = {{"hi", "stop", {7}, {{"hi", -0.25f, {{"hi", -0.25f}}}}, nullptr}};
  j = chat_response(chat, prep, meta, cr, Usage{2, 1});
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "hi");
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["token"], "hi");
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["bytes"], Json::parse("[104, 105]"));
  EXPECT_DOUBLE_EQ(j["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["logprob"].get<double>(), -0.25);

  // -inf has no JSON number: written as vLLM does.
  Json lp = completion_logprobs_json({{"a", -INFINITY, {}}, {"bc", -1.f, {{"x", -2.f}}}}, 5);
  EXPECT_DOUBLE_EQ(lp["token_logprobs"][0].get<double>(), -9999.0);
  EXPECT_EQ(lp["text_offset"], Json::parse("[5, 6]"));
  EXPECT_DOUBLE_EQ(lp["top_logprobs"][1]["x"].get<double>(), -2.0);

  ChunkChoice first;
  first.role_delta = true;
  Json c = stream_chunk(Endpoint::kChat, meta, first, true);
  EXPECT_EQ(c["object"], "chat.completion.chunk");
  EXPECT_EQ(c["choices"][0]["delta"], Json::parse(R"({"role": "assistant", "content": ""})"));
  EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(c.contains("usage") && c["usage"].is_null());
  ChunkChoice last;
  last.finish_reason = "length";
  c = stream_chunk(Endpoint::kChat, meta, last, false);
  EXPECT_EQ(c["choices"][0]["delta"], Json::object());
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(c.contains("usage"));
  ChunkChoice text;
  text.index = 1;
  text.text = "x";
  c = stream_chunk(Endpoint::kCompletions, meta, text, false);
  EXPECT_EQ(c["choices"][0]["text"], "x");
  EXPECT_EQ(c["choices"][0]["index"], 1);
  c = usage_chunk(Endpoint::kCompletions, meta, Usage{3, 4});
  EXPECT_TRUE(c["choices"].empty());
  EXPECT_EQ(c["usage"]["completion_tokens"], 4);
  EXPECT_EQ(sse_event(Json{{"a", 1}}), "data: {\"a\":1}\n\n");
}

}  // namespace
}  // namespace nb::serve
