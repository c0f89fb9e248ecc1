// The HTTP layer over loopback against a FakeService: responses, SSE framing, stop strings and stop
// ids, every error class with its status, authentication, adapter loading rules, cancellation when
// the client disconnects (streaming and not), engine errors, draining, many concurrent streams.
#include "serve/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <thread>

#include "serve/openai.h"
#include "fake_service.h"

namespace nb::serve {
namespace {

namespace fs = std::filesystem;
using testing::FakeService;
using namespace std::chrono_literals;

const std::string kDemo = std::string(NIBBLE_SOURCE_DIR) + "/models/demo";

struct Sse {
  std::vector<Json> events;  // parsed data events, [DONE] excluded
  bool done = false;         // ended with data: [DONE]
  bool well_formed = true;   // every event is "data: ...\n\n"
};

Sse parse_sse(const std::string& body) {
  Sse s;
  size_t pos = 0;
  while (pos < body.size()) {
    const size_t end = body.find("\n\n", pos);
    if (end == std::string::npos || body.compare(pos, 6, "data: ") != 0) {
      s.well_formed = false;
      break;
    }
    const std::string data = body.substr(pos + 6, end - pos - 6);
    pos = end + 2;
    if (data == "[DONE]") {
      s.done = true;
      s.well_formed = pos == body.size();
      break;
    }
    s.events.push_back(Json::parse(data));
  }
  return s;
}

// A raw connection, for clients that hang up.
class RawClient {
 public:
  explicit RawClient(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  }
  ~RawClient() { close(); }
  void post(const std::string& path, const std::string& body) {
    const std::string req = "POST " + path + " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" +
                            "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    ASSERT_EQ(::send(fd_, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  }
  // Reads until `marker` was received or the timeout passed; returns what came.
  std::string read_until(const std::string& marker, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (received_.find(marker) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) break;
      received_.append(buf, static_cast<size_t>(n));
    }
    return received_;
  }
  int fd() const { return fd_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  std::string received_;
};

class HttpServerTest : public ::testing::Test {
 protected:
  void start(HttpServerOptions opt = {}, std::chrono::milliseconds step = 1ms) {
    service_ = std::make_unique<FakeService>(step);
    ModelAssets assets;
    auto tok = Tokenizer::load(kDemo);
    ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
    assets.tokenizer = std::move(tok).value();
    auto tmpl = load_chat_template(kDemo);
    ASSERT_TRUE(tmpl.is_ok());
    assets.chat_template = std::move(tmpl).value();
    opt.host = "127.0.0.1";
    opt.port = 0;
    if (opt.threads == HttpServerOptions{}.threads) opt.threads = 32;
    if (opt.served_model_name.empty()) opt.served_model_name = "demo";
    server_ = std::make_unique<HttpServer>(*service_, std::move(assets), opt);
    auto port = server_->bind();
    ASSERT_TRUE(port.is_ok()) << port.status().to_string();
    port_ = *port;
    thread_ = std::thread([this] { server_->run(); });
    for (int i = 0; i < 500 && !server_->is_running(); ++i) std::this_thread::sleep_for(2ms);
    ASSERT_TRUE(server_->is_running());
  }
  void TearDown() override {
    if (server_) server_->stop();
    if (thread_.joinable()) thread_.join();
    server_.reset();
    service_.reset();
  }
  httplib::Client client() {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(20, 0);
    return c;
  }
  httplib::Result post(const std::string& path, const std::string& body, const httplib::Headers& h = {}) {
    httplib::Client c = client();
    return c.Post(path.c_str(), h, body, "application/json");
  }
  // The error body of a response, checked for OpenAI's shape.
  static Json error_of(const httplib::Result& r) {
    EXPECT_EQ(r->get_header_value("Content-Type"), "application/json");
    Json j = Json::parse(r->body);
    EXPECT_TRUE(j.contains("error")) << r->body;
    for (const char* k : {"message", "type", "param", "code"}) EXPECT_TRUE(j["error"].contains(k)) << r->body;
    return j["error"];
  }
  std::vector<int32_t> encode(const std::string& text) {
    auto t = Tokenizer::load(kDemo);
    return *t->encode(text, false);
  }

  std::unique_ptr<FakeService> service_;
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
  int port_ = 0;
};

TEST_F(HttpServerTest, Completion) {
  start();
  auto r = post("/v1/completions", R"({"prompt": " Hello world", "max_tokens": 4, "temperature": 0})");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  Json j = Json::parse(r->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "demo");
  EXPECT_EQ(j["choices"][0]["text"], " Hello world");  // the fake generates the prompt again
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"], Json::parse(R"({"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8})"));
  ASSERT_EQ(service_->submitted().size(), 1u);
  const GenerateRequest g = service_->submitted()[0];
  EXPECT_EQ(g.max_tokens, 4);
  EXPECT_EQ(g.adapter, "");
  EXPECT_EQ(g.stop_ids, std::vector<int32_t>{0});
  EXPECT_FLOAT_EQ(g.sampling.temperature, 0.f);
}

TEST_F(HttpServerTest, AdapterByModelAndBatchWithN) {
  start();
  auto r = post("/v1/completions", R"({"model": "kjv", "prompt": [[5, 6], [7]], "n": 2, "max_tokens": 2,
                                       "return_token_ids": true})");
  ASSERT_EQ(r->status, 200) << r->body;
  Json j = Json::parse(r->body);
  ASSERT_EQ(j["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(j["choices"][i]["index"], i);
  EXPECT_EQ(j["choices"][1]["token_ids"], Json::parse("[5, 6]"));
  EXPECT_EQ(j["choices"][2]["token_ids"], Json::parse("[7, 7]"));
  EXPECT_EQ(j["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);
  for (const GenerateRequest& g : service_->submitted()) EXPECT_EQ(g.adapter, "kjv");
}

TEST_F(HttpServerTest, StopStringTrimsAndCancels) {
  start();
  service_->set_script(encode(" Hello world. STOP here"));
  auto r = post("/v1/completions", R"({"prompt": "x", "max_tokens": 40, "stop": ["STOP", "zzz"]})");
  ASSERT_EQ(r->status, 200) << r->body;
  Json j = Json::parse(r->body);
  EXPECT_EQ(j["choices"][0]["text"], " Hello world. ");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["choices"][0]["stop_reason"], "STOP");
  EXPECT_EQ(j["usage"]["completion_tokens"], 9);
  EXPECT_EQ(service_->cancelled().size(), 1u);  // the engine was told to stop
  EXPECT_TRUE(service_->wait_idle(2s));
}

TEST_F(HttpServerTest, StopIdEndsWithoutItsText) {
  start();
  std::vector<int32_t> script = encode(" Hello");
  script.insert(script.begin() + 2, 0);  // <|endoftext|> after " He" "ll"
  service_->set_script(script);
  auto r = post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}]})");
  ASSERT_EQ(r->status, 200) << r->body;
  Json j = Json::parse(r->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["content"], " Hell");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["completion_tokens"], 3);
  EXPECT_TRUE(j["choices"][0]["stop_reason"].is_null());  // EOS
  EXPECT_TRUE(service_->cancelled().empty());
  // A stop_token_ids id is named in stop_reason (vLLM).
  r = post("/v1/completions", Json{{"prompt", "x"}, {"stop_token_ids", {script[1]}}, {"max_tokens", 10}}.dump());
  ASSERT_EQ(r->status, 200) << r->body;
  j = Json::parse(r->body);
  EXPECT_EQ(j["choices"][0]["text"], " He");
  EXPECT_EQ(j["choices"][0]["stop_reason"], script[1]);
}

TEST_F(HttpServerTest, StreamFraming) {
  start();
  service_->set_script(encode(" Hello world. STOP here"));
  auto r = post("/v1/completions", R"({"prompt": "x", "max_tokens": 6, "stream": true,
                                       "stream_options": {"include_usage": true}})");
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  Sse s = parse_sse(r->body);
  EXPECT_TRUE(s.well_formed) << r->body;
  EXPECT_TRUE(s.done);
  ASSERT_GE(s.events.size(), 3u);
  std::string text;
  int finishes = 0;
  for (size_t i = 0; i + 1 < s.events.size(); ++i) {
    const Json& e = s.events[i];
    EXPECT_EQ(e["object"], "text_completion");
    EXPECT_TRUE(e.contains("usage") && e["usage"].is_null());
    ASSERT_EQ(e["choices"].size(), 1u);
    text += e["choices"][0]["text"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) {
      ++finishes;
      EXPECT_EQ(e["choices"][0]["finish_reason"], "length");
      EXPECT_EQ(i + 2, s.events.size());  // the last choice chunk
    }
  }
  EXPECT_EQ(finishes, 1);
  EXPECT_EQ(text, " Hello world. S");
  const Json& usage = s.events.back();
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 6);
  // Without include_usage: no usage field.
  r = post("/v1/completions", R"({"prompt": "x", "max_tokens": 2, "stream": true})");
  s = parse_sse(r->body);
  ASSERT_TRUE(s.done);
  for (const Json& e : s.events) EXPECT_FALSE(e.contains("usage"));
}

TEST_F(HttpServerTest, ChatStreamStartsWithTheRoleAndStopsAtStopStrings) {
  start();
  service_->set_script(encode(" Hello world. STOP here"));
  auto r = post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "hi"}], "stream": true,
                                            "stop": "STOP", "n": 2})");
  ASSERT_EQ(r->status, 200);
  Sse s = parse_sse(r->body);
  ASSERT_TRUE(s.done && s.well_formed) << r->body;
  std::map<int, std::string> text;
  std::map<int, std::string> finish;
  for (size_t i = 0; i < s.events.size(); ++i) {
    const Json& c = s.events[i]["choices"][0];
    EXPECT_EQ(s.events[i]["object"], "chat.completion.chunk");
    const int index = c["index"];
    if (i < 2) {
      EXPECT_EQ(c["delta"], Json::parse(R"({"role": "assistant", "content": ""})"));
    }
    if (c["delta"].contains("content")) text[index] += c["delta"]["content"].get<std::string>();
    if (!c["finish_reason"].is_null()) finish[index] = c["finish_reason"];
  }
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(text[i], " Hello world. ");
    EXPECT_EQ(finish[i], "stop");
  }
}

TEST_F(HttpServerTest, Logprobs) {
  start();
  auto r = post("/v1/completions", R"({"prompt": " Hello", "max_tokens": 3, "logprobs": 2})");
  ASSERT_EQ(r->status, 200) << r->body;
  Json lp = Json::parse(r->body)["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], Json::parse(R"([" He", "ll", "o"])"));
  EXPECT_EQ(lp["token_logprobs"].size(), 3u);
  EXPECT_EQ(lp["top_logprobs"][0].size(), 2u);
  EXPECT_EQ(lp["text_offset"], Json::parse("[0, 3, 5]"));
  EXPECT_EQ(service_->submitted()[0].sampling.logprobs, 2);
  r = post("/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                                       "logprobs": true, "top_logprobs": 1})");
  ASSERT_EQ(r->status, 200) << r->body;
  Json content = Json::parse(r->body)["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["top_logprobs"].size(), 1u);
}

TEST_F(HttpServerTest, ErrorClasses) {
  HttpServerOptions opt;
  opt.max_body_bytes = 4096;
  start(opt);
  struct Case {
    const char* path;
    std::string body;
    int status;
    const char* param;  // nullptr: null
  };
  const std::string big = R"({"prompt": ")" + std::string(5000, 'a') + R"("})";
  const std::vector<Case> cases = {
      {"/v1/completions", "{bad json", 400, nullptr},
      {"/v1/completions", R"({"prompt": "x", "temperature": "hot"})", 400, "temperature"},
      {"/v1/completions", R"({"prompt": "x", "top_p": 2})", 400, "top_p"},
      {"/v1/completions", R"({"prompt": "x", "max_tokens": 0})", 400, "max_tokens"},
      {"/v1/completions", R"({"prompt": "x", "max_tokens": 1000})", 400, "max_tokens"},
      {"/v1/completions", R"({"prompt": "x", "model": "nope"})", 404, "model"},
      {"/v1/chat/completions", R"({"messages": "x"})", 400, "messages"},
      {"/v1/chat/completions", R"({"messages": [{"role": "user", "content": "x"}], "model": "nope"})", 404, "model"},
      {"/v1/completions", big, 413, nullptr},
  };
  for (const Case& c : cases) {
    auto r = post(c.path, c.body);
    ASSERT_TRUE(r) << c.body.substr(0, 80);
    EXPECT_EQ(r->status, c.status) << c.body.substr(0, 80) << " -> " << r->body;
    Json e = error_of(r);
    if (c.param) EXPECT_EQ(e["param"], c.param) << r->body;
    else EXPECT_TRUE(e["param"].is_null()) << r->body;
  }
  // The prompt-length error names both numbers.
  std::string ids = "[";
  for (int i = 0; i < 60; ++i) ids.append(i ? "," : "").append(std::to_string(i + 3));
  auto r = post("/v1/completions", R"({"prompt": )" + ids + R"(], "max_tokens": 10})");
  ASSERT_EQ(r->status, 400);
  EXPECT_NE(error_of(r)["message"].get<std::string>().find("70 tokens (60 in the prompt, 10 in the completion)"),
            std::string::npos)
      << r->body;
  // A chunked body has no Content-Length to refuse up front: it is counted as it comes.
  RawClient raw(port_);
  std::string chunked = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 5; ++i) chunked += "400\r\n" + std::string(1024, ' ') + "\r\n";
  chunked += "0\r\n\r\n";
  ASSERT_EQ(::send(raw.fd(), chunked.data(), chunked.size(), MSG_NOSIGNAL), static_cast<ssize_t>(chunked.size()));
  EXPECT_NE(raw.read_until("request_too_large", 5s).find("HTTP/1.1 413"), std::string::npos);
  // Unknown routes answer in the same shape.
  httplib::Client c = client();
  auto g = c.Get("/v1/nothing");
  EXPECT_EQ(g->status, 404);
  error_of(g);
  // One keep-alive connection survives a refused oversized body and serves the next request.
  auto first = c.Post("/v1/completions", big, "application/json");
  EXPECT_EQ(first->status, 413);
  auto second = c.Post("/v1/completions", R"({"prompt": "x", "max_tokens": 1})", "application/json");
  ASSERT_TRUE(second);
  EXPECT_EQ(second->status, 200) << second->body;
  EXPECT_TRUE(service_->wait_idle(2s));
}

TEST_F(HttpServerTest, ErrorsDoNotDisturbOtherRequests) {
  start({}, 5ms);
  auto stream = std::async(std::launch::async, [&] {
    return post("/v1/completions", R"({"prompt": [5, 6, 7], "max_tokens": 40, "stream": true})");
  });
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(post("/v1/completions", "{")->status, 400);
    EXPECT_EQ(post("/v1/completions", R"({"prompt": "x", "model": "nope"})")->status, 404);
  }
  auto r = stream.get();
  ASSERT_EQ(r->status, 200);
  Sse s = parse_sse(r->body);
  EXPECT_TRUE(s.done && s.well_formed);
}

TEST_F(HttpServerTest, ApiKey) {
  HttpServerOptions opt;
  opt.api_key = "s3cret";
  start(opt);
  const std::string body = R"({"prompt": "x", "max_tokens": 1})";
  auto r = post("/v1/completions", body);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(error_of(r)["code"], "invalid_api_key");
  EXPECT_EQ(post("/v1/completions", body, {{"Authorization", "Bearer wrong!"}})->status, 401);
  EXPECT_EQ(post("/v1/completions", body, {{"Authorization", "s3cret"}})->status, 401);
  EXPECT_EQ(post("/v1/completions", body, {{"Authorization", "Bearer s3cret"}})->status, 200);
  httplib::Client c = client();
  EXPECT_EQ(c.Get("/v1/models")->status, 401);
  EXPECT_EQ(c.Get("/v1/models", {{"Authorization", "Bearer s3cret"}})->status, 200);
  EXPECT_EQ(c.Get("/health")->status, 200);
  EXPECT_EQ(c.Get("/metrics")->status, 200);
  EXPECT_EQ(post("/v1/load_lora_adapter", R"({"lora_name": "a", "lora_path": "/tmp"})")->status, 401);
  EXPECT_TRUE(service_->submitted().size() == 1u);  // refused requests never reach the engine
}

TEST_F(HttpServerTest, RuntimeAdaptersNeedAnAllowedDir) {
  start();
  auto r = post("/v1/load_lora_adapter", R"({"lora_name": "a", "lora_path": "/tmp"})");
  EXPECT_EQ(r->status, 403);
  EXPECT_NE(error_of(r)["message"].get<std::string>().find("--allowed-adapter-dir"), std::string::npos);
  EXPECT_EQ(post("/v1/unload_lora_adapter", R"({"lora_name": "kjv"})")->status, 403);
  EXPECT_TRUE(service_->loaded_dirs().empty());
}

TEST_F(HttpServerTest, RuntimeAdapterPathsMustResolveInside) {
  const fs::path root = fs::temp_directory_path() / ("nibble_serve_test_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root / "allowed" / "a1");
  fs::create_directories(root / "outside" / "a2");
  fs::create_directory_symlink(root / "outside" / "a2", root / "allowed" / "escape");
  fs::create_directory_symlink(root / "allowed" / "a1", root / "link_in");
  HttpServerOptions opt;
  opt.allowed_adapter_dirs = {(root / "allowed").string()};
  start(opt);
  auto load = [&](const std::string& name, const fs::path& p) {
    return post("/v1/load_lora_adapter", Json{{"lora_name", name}, {"lora_path", p.string()}}.dump());
  };
  auto r = load("one", root / "allowed" / "a1");
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_NE(r->body.find("Success"), std::string::npos);
  EXPECT_EQ(load("two", root / "link_in")->status, 200);  // a link from outside to inside is inside
  EXPECT_EQ(load("three", root / "allowed" / "a1" / ".." / "a1")->status, 200);
  r = load("esc", root / "allowed" / "escape");  // a link from inside to outside is outside
  EXPECT_EQ(r->status, 403);
  EXPECT_EQ(error_of(r)["param"], "lora_path");
  EXPECT_EQ(load("up", root / "allowed" / ".." / "outside" / "a2")->status, 403);
  EXPECT_EQ(load("none", root / "allowed" / "missing")->status, 400);
  EXPECT_EQ(load("one", root / "allowed" / "a1")->status, 400);   // duplicate name
  EXPECT_EQ(load("demo", root / "allowed" / "a1")->status, 400);  // the base model's name
  EXPECT_EQ(post("/v1/load_lora_adapter", R"({"lora_name": 5, "lora_path": "x"})")->status, 400);
  EXPECT_EQ(post("/v1/load_lora_adapter", "[]")->status, 400);
  // The service got resolved paths only.
  for (const std::string& d : service_->loaded_dirs()) EXPECT_EQ(d, fs::canonical(root / "allowed" / "a1").string());
  // The new adapter serves requests by name, and is listed with the base as parent.
  EXPECT_EQ(post("/v1/completions", R"({"model": "one", "prompt": "x", "max_tokens": 1})")->status, 200);
  Json models = Json::parse(client().Get("/v1/models")->body);
  bool listed = false;
  for (const Json& m : models["data"])
    if (m["id"] == "one") listed = m["parent"] == "demo";
  EXPECT_TRUE(listed) << models.dump();
  EXPECT_EQ(post("/v1/unload_lora_adapter", R"({"lora_name": "one"})")->status, 200);
  EXPECT_EQ(post("/v1/unload_lora_adapter", R"({"lora_name": "one"})")->status, 404);
  EXPECT_EQ(post("/v1/completions", R"({"model": "one", "prompt": "x"})")->status, 404);
  fs::remove_all(root);
}

TEST_F(HttpServerTest, Models) {
  start();
  auto r = client().Get("/v1/models");
  ASSERT_EQ(r->status, 200);
  Json j = Json::parse(r->body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 2u);
  EXPECT_EQ(j["data"][0]["id"], "demo");
  EXPECT_TRUE(j["data"][0]["parent"].is_null());
  EXPECT_EQ(j["data"][0]["root"], "/models/fake-model");
  EXPECT_EQ(j["data"][1]["id"], "kjv");
  EXPECT_EQ(j["data"][1]["parent"], "demo");
  auto one = client().Get("/v1/models/kjv");
  ASSERT_EQ(one->status, 200);
  EXPECT_EQ(Json::parse(one->body), j["data"][1]);
  EXPECT_EQ(client().Get("/v1/models/nope")->status, 404);
  for (const Json& m : j["data"]) {
    EXPECT_EQ(m["object"], "model");
    EXPECT_EQ(m["owned_by"], "nibble");
    EXPECT_EQ(m["max_model_len"], 64);
    EXPECT_TRUE(m["created"].is_number_integer());
  }
}

TEST_F(HttpServerTest, StreamDisconnectCancels) {
  start({}, 20ms);
  RawClient c(port_);
  c.post("/v1/completions", R"({"prompt": [5, 6], "max_tokens": 60, "stream": true})");
  const std::string got = c.read_until("data: {", 5s);
  ASSERT_NE(got.find("data: {"), std::string::npos) << got;
  c.close();
  EXPECT_TRUE(service_->wait_idle(3s));
  EXPECT_EQ(service_->cancelled().size(), 1u);
}

TEST_F(HttpServerTest, StreamDisconnectBeforeAnyTokenCancels) {
  // No token comes for a second: the server must notice the hang-up without writing anything.
  start({}, 1000ms);
  RawClient c(port_);
  c.post("/v1/completions", R"({"prompt": [5, 6], "max_tokens": 10, "stream": true})");
  const std::string got = c.read_until("\r\n\r\n", 5s);
  ASSERT_NE(got.find("text/event-stream"), std::string::npos) << got;
  c.close();
  EXPECT_TRUE(service_->wait_idle(600ms));
  EXPECT_EQ(service_->cancelled().size(), 1u);
}

TEST_F(HttpServerTest, NonStreamingDisconnectCancels) {
  start({}, 20ms);
  RawClient c(port_);
  c.post("/v1/completions", R"({"prompt": [5, 6], "max_tokens": 60})");
  for (int i = 0; i < 100 && service_->live() == 0; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(service_->live(), 1u);
  c.close();
  EXPECT_TRUE(service_->wait_idle(1500ms));  // 60 tokens x 20 ms would take 1.2 s more
  EXPECT_EQ(service_->cancelled().size(), 1u);
}

TEST_F(HttpServerTest, EngineErrors) {
  start();
  service_->fail_after(2);
  auto r = post("/v1/completions", R"({"prompt": "x", "max_tokens": 10})");
  EXPECT_EQ(r->status, 500);
  EXPECT_EQ(error_of(r)["message"], "fake failure");
  r = post("/v1/completions", R"({"prompt": "x", "max_tokens": 10, "stream": true})");
  ASSERT_EQ(r->status, 200);
  Sse s = parse_sse(r->body);
  EXPECT_TRUE(s.done && s.well_formed) << r->body;
  ASSERT_FALSE(s.events.empty());
  EXPECT_EQ(s.events.back()["error"]["message"], "fake failure");
}

TEST_F(HttpServerTest, HealthMetricsAndPage) {
  start();
  ASSERT_EQ(post("/v1/completions", R"({"prompt": "x", "max_tokens": 2})")->status, 200);
  ASSERT_EQ(post("/v1/completions", "{")->status, 400);
  httplib::Client c = client();
  EXPECT_EQ(c.Get("/health")->status, 200);
  // cpp-httplib's logger (which counts responses) runs after the response went out: the 400 may be
  // counted a moment after the client saw it.
  auto m = c.Get("/metrics");
  for (int i = 0; i < 100 && m && m->body.find("code=\"400\"} 1\n") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    m = c.Get("/metrics");
  }
  ASSERT_EQ(m->status, 200);
  EXPECT_EQ(m->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(m->body.find("nibble_requests_total{status=\"length\"} 1\n"), std::string::npos) << m->body;
  EXPECT_NE(m->body.find("nibble_http_responses_total{route=\"/v1/completions\",code=\"400\"} 1\n"), std::string::npos);
  EXPECT_NE(m->body.find("nibble_e2e_request_latency_seconds_count 1\n"), std::string::npos);
  EXPECT_NE(m->body.find("nibble_adapter_requests_total{adapter=\"kjv\"}"), std::string::npos);
  auto page = c.Get("/");
  ASSERT_EQ(page->status, 200);
  EXPECT_EQ(page->get_header_value("Content-Type"), "text/html; charset=utf-8");
  EXPECT_NE(page->body.find("<title>nibble</title>"), std::string::npos);
  EXPECT_NE(page->body.find("/v1/chat/completions"), std::string::npos);
  EXPECT_EQ(page->body.find("http://"), std::string::npos);  // nothing from elsewhere
  EXPECT_EQ(page->body.find("https://"), std::string::npos);
}

TEST_F(HttpServerTest, ShutdownDrains) {
  start({}, 10ms);
  auto stream = std::async(std::launch::async, [&] {
    return post("/v1/completions", R"({"prompt": [5], "max_tokens": 50, "stream": true})");
  });
  for (int i = 0; i < 200 && service_->live() == 0; ++i) std::this_thread::sleep_for(5ms);
  auto stopping = std::async(std::launch::async, [&] { server_->shutdown(std::chrono::seconds(10)); });
  std::this_thread::sleep_for(50ms);
  auto refused = post("/v1/completions", R"({"prompt": "x", "max_tokens": 1})");
  if (refused) {
    EXPECT_EQ(refused->status, 503);
  }
  auto r = stream.get();
  ASSERT_TRUE(r);
  Sse s = parse_sse(r->body);
  EXPECT_TRUE(s.done && s.well_formed);
  std::string text;
  for (const Json& e : s.events) text += e["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(s.events.back()["choices"][0]["finish_reason"], "length");  // ran to the end
  stopping.get();
  thread_.join();
  EXPECT_FALSE(server_->is_running());
}

TEST_F(HttpServerTest, ManyConcurrentStreams) {
  // Each stream holds an HTTP worker for its whole life: all 64 must be generating at once (the
  // library's default pool of max(8, cores - 1) workers would run 8 at a time).
  HttpServerOptions opt;
  opt.threads = 96;
  start(opt, 30ms);
  std::vector<std::future<httplib::Result>> streams;
  for (int i = 0; i < 64; ++i)
    streams.push_back(std::async(std::launch::async, [&] {
      return post("/v1/completions", R"({"prompt": [5, 6], "max_tokens": 30, "stream": true})");
    }));
  for (auto& f : streams) {
    auto r = f.get();
    ASSERT_TRUE(r);
    Sse s = parse_sse(r->body);
    EXPECT_TRUE(s.done && s.well_formed);
  }
  EXPECT_EQ(service_->peak_live(), 64u);
}

}  // namespace
}  // namespace nb::serve
