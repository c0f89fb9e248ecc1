#include "serve/http_server.h"

#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/select.h>
#include <sys/socket.h>

#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <ctime>
#include <algorithm>
#include <deque>
#include <map>
#include <span>
#include <mutex>
#include <set>
#include <thread>

#include "core/log.h"
#include "core/mmap.h"
#include "serve/detok.h"
#include "serve/openai.h"

namespace nb::serve {

// src/serve/web/index.html, embedded by src/serve/web/embed.cmake.
extern const unsigned char kIndexHtml[];
extern const size_t kIndexHtmlSize;

namespace {

using Clock = std::chrono::steady_clock;
using httplib::ContentReader;
using httplib::DataSink;
using httplib::Request;
using httplib::Response;

double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// cpp-httplib 0.11.4 listens with a backlog of 5, too short for a burst of clients connecting at
// once (the excess SYNs are dropped and retried after a second). listen() again widens it.
class Listener : public httplib::Server {
 public:
  void widen_backlog(int backlog) { ::listen(svr_sock_, backlog); }
};

// The address of a socket's own end (peer = false) or of its peer, as cpp-httplib writes them in
// Request::local_addr / remote_addr. False for sockets that are not connected TCP sockets.
bool address_of(int fd, bool peer, std::string* host, int* port) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  auto* sa = reinterpret_cast<sockaddr*>(&addr);
  if ((peer ? ::getpeername(fd, sa, &len) : ::getsockname(fd, sa, &len)) != 0) return false;
  if (addr.ss_family == AF_INET) *port = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  else if (addr.ss_family == AF_INET6) *port = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  else return false;
  if (!host) return true;
  char buf[NI_MAXHOST];
  if (::getnameinfo(sa, len, buf, sizeof(buf), nullptr, 0, NI_NUMERICHOST) != 0) return false;
  *host = buf;
  return true;
}

// The socket of a request, found by its addresses: cpp-httplib gives handlers no socket, and a
// non-streaming handler must notice a client that hung up while its request was generating.
// (cpp-httplib serves only fds below FD_SETSIZE, so the scan is bounded.)
class ConnectionProbe {
 public:
  explicit ConnectionProbe(const Request& req) {
    for (int fd = 3; fd < FD_SETSIZE && fd_ < 0; ++fd) {
      std::string host;
      int port = -1;
      if (address_of(fd, /*peer=*/false, nullptr, &port) && port == req.local_port &&
          address_of(fd, /*peer=*/true, &host, &port) && port == req.remote_port && host == req.remote_addr)
        fd_ = fd;
    }
  }
  // True once the peer closed or reset the connection (a pipelined next request is not a close).
  bool peer_closed() const {
    if (fd_ < 0) return false;
    pollfd p{fd_, static_cast<short>(POLLIN | POLLRDHUP), 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP)) return true;
    char c;
    return ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
  }

 private:
  int fd_ = -1;
};

// A connection by its peer's address ("127.0.0.1", 54321).
using Peer = std::pair<std::string, int>;

// After stop(), cpp-httplib's workers of idle keep-alive connections notice it only when their
// keep-alive wait ends, and the server waits for them. Shutting down the read side of every idle
// connection accepted on `port` ends those waits at once. Not the `busy` ones (a response still
// being written): cpp-httplib checks that the socket is alive before each write, and a socket
// shut for reading looks closed.
void wake_idle_connections(int port, const std::multiset<Peer>& busy) {
  for (int fd = 3; fd < FD_SETSIZE; ++fd) {
    Peer peer;
    int local = -1;
    if (address_of(fd, /*peer=*/false, nullptr, &local) && local == port &&
        address_of(fd, /*peer=*/true, &peer.first, &peer.second) && !busy.count(peer))
      ::shutdown(fd, SHUT_RD);
  }
}

// What the engine thread hands to the HTTP thread of one API request.
struct EngineEvent {
  int choice = 0;
  std::vector<TokenOut> tokens;
  bool finished = false;
  std::string reason, error;
};

class EventQueue {
 public:
  void push(EngineEvent e) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(std::move(e));
    }
    cv_.notify_one();
  }
  // Everything queued, waiting up to `wait` for the first event.
  std::deque<EngineEvent> take(std::chrono::milliseconds wait) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, wait, [&] { return !events_.empty(); });
    std::deque<EngineEvent> out;
    out.swap(events_);
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<EngineEvent> events_;
};

// Called on the engine thread: only queues.
class ChoiceObserver final : public RequestObserver {
 public:
  ChoiceObserver(std::shared_ptr<EventQueue> queue, int choice) : queue_(std::move(queue)), choice_(choice) {}
  void on_tokens(const std::vector<TokenOut>& tokens) override { queue_->push({choice_, tokens, false, {}, {}}); }
  void on_finish(const std::string& reason, const std::string& error) override {
    queue_->push({choice_, {}, true, reason, error});
  }

 private:
  std::shared_ptr<EventQueue> queue_;
  int choice_;
};

ApiError unauthorized() {
  return ApiError{401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'", "authentication_error",
                  "", "invalid_api_key"};
}
ApiError unavailable() { return ApiError{503, "the server is shutting down", "server_error", "", "shutting_down"}; }

std::string route_label(const std::string& path) {
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
  static const char* kRoutes[] = {"/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/load_lora_adapter",
                                  "/v1/unload_lora_adapter", "/health", "/metrics", "/"};
  for (const char* r : kRoutes)
    if (path == r) return r;
  return "other";
}

// Whether `path` is `dir` or inside it (both resolved).
bool path_within(const std::string& path, const std::string& dir) {
  if (dir == "/") return true;
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/');
}

std::optional<std::string> real_path(const std::string& path) {
  char* r = ::realpath(path.c_str(), nullptr);
  if (!r) return std::nullopt;
  std::string out(r);
  std::free(r);
  return out;
}

}  // namespace

struct HttpServer::Impl {
  class Job;
  Impl(Service& s, ModelAssets a, HttpServerOptions o);

  void install_routes();
  bool authorized(const Request& req) const;
  // Reads the body; false with the error response set (401, 413, 400).
  bool read_body(const Request& req, Response& res, const ContentReader& reader, std::string* body);
  void reply_error(Response& res, const ApiError& e) const;
  void reply_json(Response& res, const Json& j) const;
  std::optional<ApiError> resolve_model(const std::string& model, std::string* adapter) const;

  void handle_generate(Endpoint endpoint, const Request& req, Response& res, const ContentReader& reader);
  void wait_and_reply(const std::shared_ptr<Job>& job, const Request& req, Response& res);
  void start_stream(const std::shared_ptr<Job>& job, Response& res);
  Json model_entry(const std::string& id, const std::string& root, const Json& parent) const;
  void handle_models(Response& res);
  void handle_model(const std::string& id, Response& res);
  void handle_load(const Json& body, Response& res);
  void handle_unload(const Json& body, Response& res);
  std::optional<Json> parse_object(const std::string& body, Response& res);
  std::optional<std::string> string_field(const Json& body, const char* name, Response& res);
  std::optional<ApiError> runtime_adapters_allowed() const;

  void job_started();
  void job_ended();

  Service& service;
  ModelAssets assets;
  HttpServerOptions opt;
  ModelInfo info;
  int64_t created = 0;
  int port = 0;  // bound
  Listener svr;
  ServerMetrics metrics;
  std::vector<std::string> allowed_dirs;  // resolved
  std::atomic<bool> draining{false};
  std::atomic<bool> stop_requested{false}, run_active{false};
  std::mutex active_mu;
  std::condition_variable active_cv;
  int active_jobs = 0;
  std::mutex busy_mu;
  std::multiset<Peer> busy;  // connections with a request being handled or its response written
};

// One API request in flight: its choices (one GenerateRequest each), their text streams, and the
// queue their observers fill. Used by one HTTP thread at a time.
class HttpServer::Impl::Job {
 public:
  Job(HttpServer::Impl& server, ApiRequest request, PreparedRequest prepared, ResponseMeta meta, Clock::time_point arrival)
      : server_(server),
        req_(std::move(request)),
        prep_(std::move(prepared)),
        meta_(std::move(meta)),
        arrival_(arrival),
        queue_(std::make_shared<EventQueue>()),
        choices_(prep_.choices.size()),
        remaining_(static_cast<int>(prep_.choices.size())) {
    const Tokenizer* tok = server_.assets.tokenizer ? &*server_.assets.tokenizer : nullptr;
    for (Choice& c : choices_)
      if (tok) c.text.emplace(*tok, req_.stop, prep_.stop_ids, req_.skip_special_tokens, req_.include_stop_str_in_output);
    server_.job_started();
  }
  ~Job() {
    cancel();
    server_.job_ended();
  }
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  const ApiRequest& request() const { return req_; }
  const PreparedRequest& prepared() const { return prep_; }
  const ResponseMeta& meta() const { return meta_; }
  bool done() const { return remaining_ == 0; }
  const std::optional<ApiError>& error() const { return error_; }

  std::optional<ApiError> submit() {
    for (size_t i = 0; i < choices_.size(); ++i) {
      auto observer = std::make_shared<ChoiceObserver>(queue_, static_cast<int>(i));
      Result<uint64_t> id = server_.service.submit(prep_.choices[i], observer);
      if (!id.is_ok()) {
        for (size_t j = i; j < choices_.size(); ++j) {  // never submitted: nothing to count
          choices_[j].done = true;
          --remaining_;
        }
        cancel();
        if (server_.draining) return unavailable();
        return api_error_from(id.status(), id.status().code() == ErrorCode::kNotFound ? "model" : "");
      }
      choices_[i].id = *id;
      choices_[i].submitted = true;
    }
    return std::nullopt;
  }

  // Applies the engine events that arrive within `wait`; returns the new output of each choice
  // that changed, in choice order.
  std::vector<ChunkChoice> poll(std::chrono::milliseconds wait) {
    std::deque<EngineEvent> events = queue_->take(wait);
    std::map<int, Delta> deltas;
    for (EngineEvent& e : events) {
      if (e.choice < 0 || static_cast<size_t>(e.choice) >= choices_.size()) continue;
      Delta& d = deltas[e.choice];
      if (e.finished) apply_finish(e.choice, e.reason, e.error, &d);
      else apply_tokens(e.choice, e.tokens, &d);
    }
    std::vector<ChunkChoice> out;
    for (auto& [index, d] : deltas) {
      // Text held back (partial character, possible stop string) leaves nothing to send unless
      // the client asked for every token's ids or log-probabilities.
      const bool ids = req_.return_token_ids && !d.token_ids.empty();
      if (d.text.empty() && d.finish_reason.empty() && d.logprobs.empty() && !ids) continue;
      ChunkChoice c;
      c.index = index;
      c.text = std::move(d.text);
      c.finish_reason = d.finish_reason == "error" ? std::string() : d.finish_reason;
      if (!c.finish_reason.empty()) c.stop_reason = choices_[static_cast<size_t>(index)].stop_reason;
      if (req_.sampling.logprobs >= 0) {
        c.logprobs = req_.endpoint == Endpoint::kChat ? chat_logprobs_json(d.logprobs)
                                                      : completion_logprobs_json(d.logprobs, d.text_offset);
      }
      if (req_.return_token_ids) c.token_ids = std::move(d.token_ids);
      out.push_back(std::move(c));
    }
    return out;
  }

  // The client is gone (or the response ended early): cancel every choice still running.
  void cancel() {
    for (size_t i = 0; i < choices_.size(); ++i)
      if (!choices_[i].done) finish_choice(static_cast<int>(i), "abort");
  }

  Usage usage() const {
    Usage u;
    for (const std::vector<int32_t>& prompt : prep_.prompt_ids)  // once per prompt, whatever n (as OpenAI)
      u.prompt_tokens += static_cast<int64_t>(prompt.size());
    for (const Choice& c : choices_) u.completion_tokens += c.generated;
    return u;
  }

  std::vector<ChoiceResult> results() const {
    std::vector<ChoiceResult> out;
    for (const Choice& c : choices_)
      out.push_back({c.output, c.finish_reason, c.token_ids, c.logprobs, c.stop_reason});
    return out;
  }

  // One step of an SSE response; false ends the connection (client gone).
  bool stream_step(DataSink& sink) {
    if (!stream_started_) {
      stream_started_ = true;
      if (!write_stream_prologue(sink)) return false;
    }
    std::vector<ChunkChoice> deltas = poll(std::chrono::milliseconds(50));
    for (ChunkChoice& c : deltas) {
      if (!write(sink, sse_event(stream_chunk(req_.endpoint, meta_, c, req_.include_usage)))) return false;
    }
    // Nothing to write: make sure the client is still there (a closed socket reads as EOF).
    if (deltas.empty() && !done() && !sink.is_writable()) {
      cancel();
      return false;
    }
    if (!done()) return true;
    if (error_ && !write(sink, sse_event(Json::parse(error_json(*error_))))) return false;
    if (req_.include_usage && !write(sink, sse_event(usage_chunk(req_.endpoint, meta_, usage())))) return false;
    if (!write(sink, std::string(kSseDone))) return false;
    sink.done();
    return true;
  }

 private:
  struct Choice {
    uint64_t id = 0;
    bool submitted = false;
    bool done = false;
    std::optional<TextStream> text;  // absent without a tokenizer (token ids only)
    std::string output;
    size_t emitted = 0;  // bytes of text streamed (completions' text_offset)
    std::vector<int32_t> token_ids;
    std::vector<TokenLogprob> logprobs;
    int64_t generated = 0;
    Clock::time_point first_token, last_token;
    std::string finish_reason;
    Json stop_reason;  // null, the stop string, or a stop_token_ids id
  };
  struct Delta {
    std::string text;
    size_t text_offset = 0;
    std::vector<TokenLogprob> logprobs;
    std::vector<int32_t> token_ids;
    std::string finish_reason;
  };

  bool write(DataSink& sink, const std::string& data) {
    if (sink.write(data.data(), data.size())) return true;
    cancel();
    return false;
  }

  // Chat streams open with the assistant role; completions streams with the echoed prompt.
  bool write_stream_prologue(DataSink& sink) {
    if (req_.endpoint == Endpoint::kCompletions && !req_.echo) return true;
    for (size_t i = 0; i < choices_.size(); ++i) {
      ChunkChoice c;
      c.index = static_cast<int>(i);
      if (req_.endpoint == Endpoint::kChat) {
        c.role_delta = true;
      } else {
        c.text = prep_.prompt_texts[i / static_cast<size_t>(req_.n)];
        choices_[i].emitted = c.text.size();
      }
      if (!write(sink, sse_event(stream_chunk(req_.endpoint, meta_, c, req_.include_usage)))) return false;
    }
    return true;
  }

  std::string token_text(int32_t id) const {
    if (server_.assets.tokenizer) {
      Result<std::string> t = server_.assets.tokenizer->decode(std::span<const int32_t>(&id, 1));
      if (t.is_ok()) return *t;
    }
    return strformat("token_id:%d", id);
  }

  void append_text(Choice& c, Delta* d, const std::string& piece) {
    if (d->text.empty()) d->text_offset = c.emitted;
    d->text += piece;
    c.output += piece;
    c.emitted += piece.size();
  }

  void apply_tokens(int index, const std::vector<TokenOut>& tokens, Delta* d) {
    Choice& c = choices_[static_cast<size_t>(index)];
    for (const TokenOut& t : tokens) {
      if (c.done) return;
      const Clock::time_point now = Clock::now();
      if (c.generated == 0) c.first_token = now;
      c.last_token = now;
      ++c.generated;
      c.token_ids.push_back(t.id);
      d->token_ids.push_back(t.id);
      if (req_.sampling.logprobs >= 0) {
        TokenLogprob lp{token_text(t.id), t.logprob, {}};
        for (const auto& [id, value] : t.top) lp.top.emplace_back(token_text(id), value);
        c.logprobs.push_back(lp);
        d->logprobs.push_back(std::move(lp));
      }
      if (!c.text) continue;
      Result<std::string> piece = c.text->push(t.id);
      if (!piece.is_ok()) return fail_choice(index, piece.status().to_string(), d);
      append_text(c, d, *piece);
      if (c.text->stopped()) {
        // A stop string: the text is complete; the engine need not go on.
        c.stop_reason = c.text->stop_string();
        d->finish_reason = "stop";
        finish_choice(index, "stop");
        return;
      }
    }
  }

  void apply_finish(int index, const std::string& reason, const std::string& error, Delta* d) {
    Choice& c = choices_[static_cast<size_t>(index)];
    if (c.done) return;
    c.submitted = false;  // the engine is done with it: nothing to cancel
    if (reason == "error") return fail_choice(index, error.empty() ? "the request failed" : error, d);
    std::string final_reason = reason;
    if (c.text) {
      Result<std::string> rest = c.text->finish();
      if (!rest.is_ok()) return fail_choice(index, rest.status().to_string(), d);
      append_text(c, d, *rest);
      if (c.text->stopped()) {
        final_reason = "stop";
        c.stop_reason = c.text->stop_string();
      } else if (c.text->hit_stop_id()) {
        // vLLM reports which of the request's stop_token_ids ended it (EOS stays null).
        const std::vector<int32_t>& asked = req_.stop_token_ids;
        if (std::find(asked.begin(), asked.end(), c.text->stop_id()) != asked.end()) c.stop_reason = c.text->stop_id();
      }
    }
    d->finish_reason = final_reason;
    finish_choice(index, final_reason);
  }

  void fail_choice(int index, const std::string& message, Delta* d) {
    if (!error_) error_ = ApiError{500, message, "server_error", "", ""};
    d->finish_reason = "error";
    finish_choice(index, "error");
    cancel();  // one failed choice fails the whole response
  }

  // Final: counts it in the metrics and tells the engine to stop if it still runs.
  void finish_choice(int index, const std::string& reason) {
    Choice& c = choices_[static_cast<size_t>(index)];
    if (c.done) return;
    c.done = true;
    c.finish_reason = reason;
    --remaining_;
    if (c.submitted) {
      server_.service.cancel(c.id);
      c.submitted = false;
    }
    const Clock::time_point now = Clock::now();
    RequestRecord r;
    r.status = reason;
    r.e2e_seconds = seconds_between(arrival_, now);
    if (c.generated > 0) r.ttft_seconds = seconds_between(arrival_, c.first_token);
    if (c.generated > 1) r.tpot_seconds = seconds_between(c.first_token, c.last_token) / static_cast<double>(c.generated - 1);
    server_.metrics.record_request(r);
  }

  HttpServer::Impl& server_;
  ApiRequest req_;
  PreparedRequest prep_;
  ResponseMeta meta_;
  Clock::time_point arrival_;
  std::shared_ptr<EventQueue> queue_;
  std::vector<Choice> choices_;
  int remaining_;
  std::optional<ApiError> error_;
  bool stream_started_ = false;
};

HttpServer::Impl::Impl(Service& s, ModelAssets a, HttpServerOptions o)
    : service(s), assets(std::move(a)), opt(std::move(o)), info(s.model_info()), created(std::time(nullptr)) {
  if (opt.served_model_name.empty()) {
    std::string dir = info.model_dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    const size_t slash = dir.find_last_of('/');
    opt.served_model_name = slash == std::string::npos ? dir : dir.substr(slash + 1);
    if (opt.served_model_name.empty()) opt.served_model_name = "model";
  }
}

void HttpServer::Impl::job_started() {
  std::lock_guard<std::mutex> lock(active_mu);
  ++active_jobs;
}

void HttpServer::Impl::job_ended() {
  {
    std::lock_guard<std::mutex> lock(active_mu);
    --active_jobs;
  }
  active_cv.notify_all();
}

bool HttpServer::Impl::authorized(const Request& req) const {
  if (opt.api_key.empty()) return true;
  const std::string given = req.get_header_value("Authorization");
  const std::string expected = "Bearer " + opt.api_key;
  if (given.size() != expected.size()) return false;
  unsigned char diff = 0;  // constant time: no early exit on the first wrong byte
  for (size_t i = 0; i < given.size(); ++i) diff |= static_cast<unsigned char>(given[i] ^ expected[i]);
  return diff == 0;
}

bool HttpServer::Impl::read_body(const Request& req, Response& res, const ContentReader& reader, std::string* body) {
  const bool auth = authorized(req);
  bool too_large = false;
  // Bodies that will be refused are still read to the end (and dropped), so that the connection
  // stays in step for its next request.
  const bool ok = reader([&](const char* data, size_t n) {
    if (!auth || too_large) return true;
    if (body->size() + n > opt.max_body_bytes) {
      too_large = true;
      std::string().swap(*body);
      return true;
    }
    body->append(data, n);
    return true;
  });
  if (!auth) {
    reply_error(res, unauthorized());
    return false;
  }
  if (too_large || res.status == 413) {
    reply_error(res, ApiError{413,
                              strformat("the request body is larger than the limit of %zu bytes", opt.max_body_bytes),
                              "invalid_request_error", "", "request_too_large"});
    return false;
  }
  if (!ok) {
    reply_error(res, bad_request("could not read the request body"));
    return false;
  }
  return true;
}

void HttpServer::Impl::reply_error(Response& res, const ApiError& e) const {
  res.status = e.status;
  res.set_content(error_json(e), "application/json");
}

void HttpServer::Impl::reply_json(Response& res, const Json& j) const {
  res.status = 200;
  res.set_content(dump(j), "application/json");
}

std::optional<ApiError> HttpServer::Impl::resolve_model(const std::string& model, std::string* adapter) const {
  adapter->clear();
  if (model.empty() || model == opt.served_model_name) return std::nullopt;
  for (const AdapterInfo& a : service.adapters()) {
    if (a.name == model) {
      *adapter = model;
      return std::nullopt;
    }
  }
  return not_found_error(strformat("The model `%s` does not exist. Available: the base model `%s` and the adapters "
                                   "listed by GET /v1/models.",
                                   model.c_str(), opt.served_model_name.c_str()),
                         "model");
}

void HttpServer::Impl::handle_generate(Endpoint endpoint, const Request& req, Response& res,
                                       const ContentReader& reader) {
  const Clock::time_point arrival = Clock::now();
  std::string body;
  if (!read_body(req, res, reader, &body)) return;
  if (draining) return reply_error(res, unavailable());
  ApiResult<ApiRequest> parsed = parse_api_request(endpoint, body);
  if (!parsed.is_ok()) return reply_error(res, parsed.error());
  std::string adapter;
  if (std::optional<ApiError> e = resolve_model(parsed->model, &adapter)) return reply_error(res, *e);
  PromptContext ctx;
  ctx.tokenizer = assets.tokenizer ? &*assets.tokenizer : nullptr;
  ctx.chat_template = assets.chat_template ? &*assets.chat_template : nullptr;
  ctx.max_model_len = info.max_model_len;
  ctx.vocab_size = info.vocab_size;
  ApiResult<PreparedRequest> prepared = prepare_requests(*parsed, ctx, adapter);
  if (!prepared.is_ok()) return reply_error(res, prepared.error());
  ResponseMeta meta{new_response_id(endpoint), static_cast<int64_t>(std::time(nullptr)),
                    parsed->model.empty() ? opt.served_model_name : parsed->model};
  auto job = std::make_shared<Job>(*this, std::move(*parsed), std::move(*prepared), std::move(meta), arrival);
  if (std::optional<ApiError> e = job->submit()) return reply_error(res, *e);
  if (job->request().stream) return start_stream(job, res);
  wait_and_reply(job, req, res);
}

void HttpServer::Impl::wait_and_reply(const std::shared_ptr<Job>& job, const Request& req, Response& res) {
  ConnectionProbe probe(req);
  while (!job->done()) {
    job->poll(std::chrono::milliseconds(100));
    if (!job->done() && probe.peer_closed()) {
      job->cancel();
      res.status = 499;  // client closed the request (nginx's code); nobody reads it
      return;
    }
  }
  if (job->error()) return reply_error(res, *job->error());
  const Json body = job->request().endpoint == Endpoint::kChat
                        ? chat_response(job->request(), job->prepared(), job->meta(), job->results(), job->usage())
                        : completion_response(job->request(), job->prepared(), job->meta(), job->results(), job->usage());
  reply_json(res, body);
}

void HttpServer::Impl::start_stream(const std::shared_ptr<Job>& job, Response& res) {
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  // Exactly "text/event-stream": cpp-httplib compresses other text types, which would hold the
  // events back in the compressor.
  res.set_chunked_content_provider(
      "text/event-stream", [job](size_t, DataSink& sink) { return job->stream_step(sink); },
      [job](bool) { job->cancel(); });
}

Json HttpServer::Impl::model_entry(const std::string& id, const std::string& root, const Json& parent) const {
  return Json{{"id", id},         {"object", "model"}, {"created", created},
              {"owned_by", "nibble"}, {"root", root},     {"parent", parent},
              {"max_model_len", info.max_model_len}};
}

void HttpServer::Impl::handle_models(Response& res) {
  Json data = Json::array();
  data.push_back(model_entry(opt.served_model_name, info.model_dir, nullptr));
  for (const AdapterInfo& a : service.adapters()) data.push_back(model_entry(a.name, a.path, opt.served_model_name));
  reply_json(res, Json{{"object", "list"}, {"data", data}});
}

void HttpServer::Impl::handle_model(const std::string& id, Response& res) {
  if (id == opt.served_model_name) return reply_json(res, model_entry(id, info.model_dir, nullptr));
  for (const AdapterInfo& a : service.adapters())
    if (a.name == id) return reply_json(res, model_entry(a.name, a.path, opt.served_model_name));
  reply_error(res, not_found_error(strformat("The model `%s` does not exist.", id.c_str()), "model"));
}

std::optional<Json> HttpServer::Impl::parse_object(const std::string& body, Response& res) {
  Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    reply_error(res, bad_request("the request body must be a JSON object"));
    return std::nullopt;
  }
  return j;
}

std::optional<std::string> HttpServer::Impl::string_field(const Json& body, const char* name, Response& res) {
  auto it = body.find(name);
  if (it == body.end() || !it->is_string() || it->get<std::string>().empty()) {
    reply_error(res, bad_request(strformat("'%s' must be a non-empty string", name), name));
    return std::nullopt;
  }
  return it->get<std::string>();
}

std::optional<ApiError> HttpServer::Impl::runtime_adapters_allowed() const {
  if (!allowed_dirs.empty()) return std::nullopt;
  return ApiError{403,
                  "loading and unloading adapters at run time is disabled: start nibble serve with "
                  "--allowed-adapter-dir DIR to allow adapters found under DIR",
                  "permission_error", "", "runtime_adapters_disabled"};
}

void HttpServer::Impl::handle_load(const Json& body, Response& res) {
  std::optional<std::string> name = string_field(body, "lora_name", res);
  if (!name) return;
  std::optional<std::string> path = string_field(body, "lora_path", res);
  if (!path) return;
  if (std::optional<ApiError> e = runtime_adapters_allowed()) return reply_error(res, *e);
  for (char c : *name)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      return reply_error(res, bad_request("'lora_name' must not contain control characters", "lora_name"));
  if (name->size() > 256) return reply_error(res, bad_request("'lora_name' is longer than 256 bytes", "lora_name"));
  if (*name == opt.served_model_name)
    return reply_error(res, bad_request(strformat("'%s' is the base model's name", name->c_str()), "lora_name"));
  std::optional<std::string> real = real_path(*path);
  if (!real)
    return reply_error(res, bad_request(strformat("lora_path '%s' does not exist", path->c_str()), "lora_path"));
  bool inside = false;
  for (const std::string& dir : allowed_dirs) inside = inside || path_within(*real, dir);
  if (!inside) {
    std::string dirs;
    for (const std::string& dir : allowed_dirs) dirs += (dirs.empty() ? "" : ", ") + dir;
    return reply_error(res, ApiError{403,
                                     strformat("lora_path '%s' resolves to '%s', outside the allowed adapter "
                                               "directories (--allowed-adapter-dir): %s",
                                               path->c_str(), real->c_str(), dirs.c_str()),
                                     "permission_error", "lora_path", "adapter_path_not_allowed"});
  }
  // The resolved path: a symlink changed after this check cannot lead elsewhere.
  if (Status s = service.load_adapter(*name, *real); !s.is_ok()) {
    // A directory without a valid adapter is a bad request (the path itself exists).
    ApiError e = api_error_from(s, "lora_path");
    if (e.status == 404) e = bad_request(s.message(), "lora_path");
    return reply_error(res, e);
  }
  NB_LOG_INFO("nibble serve: loaded adapter '%s' from %s", name->c_str(), real->c_str());
  res.status = 200;
  res.set_content(strformat("Success: LoRA adapter '%s' added successfully.", name->c_str()), "text/plain");
}

void HttpServer::Impl::handle_unload(const Json& body, Response& res) {
  std::optional<std::string> name = string_field(body, "lora_name", res);
  if (!name) return;
  if (std::optional<ApiError> e = runtime_adapters_allowed()) return reply_error(res, *e);
  if (Status s = service.unload_adapter(*name); !s.is_ok()) return reply_error(res, api_error_from(s, "lora_name"));
  NB_LOG_INFO("nibble serve: unloaded adapter '%s'", name->c_str());
  res.status = 200;
  res.set_content(strformat("Success: LoRA adapter '%s' removed successfully.", name->c_str()), "text/plain");
}

void HttpServer::Impl::install_routes() {
  using HandlerWithReader = httplib::Server::HandlerWithContentReader;
  svr.Post("/v1/completions", HandlerWithReader([this](const Request& req, Response& res, const ContentReader& r) {
             handle_generate(Endpoint::kCompletions, req, res, r);
           }));
  svr.Post("/v1/chat/completions", HandlerWithReader([this](const Request& req, Response& res, const ContentReader& r) {
             handle_generate(Endpoint::kChat, req, res, r);
           }));
  auto admin = [this](void (Impl::*handler)(const Json&, Response&)) {
    return HandlerWithReader([this, handler](const Request& req, Response& res, const ContentReader& r) {
      std::string body;
      if (!read_body(req, res, r, &body)) return;
      if (std::optional<Json> j = parse_object(body, res)) (this->*handler)(*j, res);
    });
  };
  svr.Post("/v1/load_lora_adapter", admin(&Impl::handle_load));
  svr.Post("/v1/unload_lora_adapter", admin(&Impl::handle_unload));
  svr.Get("/v1/models", [this](const Request& req, Response& res) {
    if (!authorized(req)) return reply_error(res, unauthorized());
    handle_models(res);
  });
  svr.Get(R"(/v1/models/(.+))", [this](const Request& req, Response& res) {
    if (!authorized(req)) return reply_error(res, unauthorized());
    handle_model(req.matches[1].str(), res);
  });
  svr.Get("/health", [this](const Request&, Response& res) {
    res.status = draining ? 503 : 200;
    res.set_content("", "text/plain");
  });
  svr.Get("/metrics", [this](const Request&, Response& res) {
    res.set_content(metrics.render(service.stats()), "text/plain; version=0.0.4; charset=utf-8");
  });
  svr.Get("/", [](const Request&, Response& res) {
    res.set_header("Content-Security-Policy",
                   "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
                   "img-src data:");
    res.set_content(reinterpret_cast<const char*>(kIndexHtml), kIndexHtmlSize, "text/html; charset=utf-8");
  });
  // Statuses set by cpp-httplib itself (unknown route, body over the limit, bad request line) get
  // an OpenAI-style body too.
  svr.set_error_handler(httplib::Server::HandlerWithResponse([](const Request& req, Response& res) {
    if (!res.body.empty() || res.content_provider_) return httplib::Server::HandlerResponse::Unhandled;
    ApiError e;
    e.status = res.status;
    if (res.status == 404) {
      e = ApiError{404, strformat("no route %s %s", req.method.c_str(), req.path.c_str()), "not_found_error", "", ""};
    } else if (res.status == 413) {
      e = ApiError{413, "the request body is too large", "invalid_request_error", "", "request_too_large"};
    } else {
      e.message = strformat("HTTP %d", res.status);
      e.type = res.status >= 500 ? "server_error" : "invalid_request_error";
    }
    res.set_content(error_json(e), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    NB_LOG_ERROR("nibble serve: handler failed: %s", what.c_str());
    res.status = 500;
    res.set_content(error_json(ApiError{500, "internal error: " + what, "server_error", "", ""}), "application/json");
  });
  // A request is busy from routing until its response is written (the logger runs then).
  svr.set_pre_routing_handler([this](const Request& req, Response&) {
    std::lock_guard<std::mutex> lock(busy_mu);
    busy.insert({req.remote_addr, req.remote_port});
    return httplib::Server::HandlerResponse::Unhandled;
  });
  svr.set_logger([this](const Request& req, const Response& res) {
    metrics.record_response(route_label(req.path), res.status);
    std::lock_guard<std::mutex> lock(busy_mu);
    if (auto it = busy.find({req.remote_addr, req.remote_port}); it != busy.end()) busy.erase(it);
  });
}

HttpServer::HttpServer(Service& service, ModelAssets assets, HttpServerOptions options)
    : impl_(std::make_unique<Impl>(service, std::move(assets), std::move(options))) {
  Impl& s = *impl_;
  const int threads = std::max(8, s.opt.threads);
  s.svr.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  s.svr.set_tcp_nodelay(true);  // SSE events are small: send each at once
  s.svr.set_keep_alive_max_count(1000);
  s.svr.set_keep_alive_timeout(s.opt.keep_alive_seconds);
  s.svr.set_read_timeout(s.opt.io_timeout_seconds, 0);
  s.svr.set_write_timeout(s.opt.io_timeout_seconds, 0);
  s.svr.set_payload_max_length(s.opt.max_body_bytes);
  s.install_routes();
}

HttpServer::~HttpServer() {
  if (impl_->svr.is_running()) impl_->svr.stop();
}

Result<int> HttpServer::bind() {
  Impl& s = *impl_;
  s.allowed_dirs.clear();
  for (const std::string& dir : s.opt.allowed_adapter_dirs) {
    std::optional<std::string> real = real_path(dir);
    if (!real || !is_directory(*real))
      return not_found(strformat("--allowed-adapter-dir '%s' is not an existing directory", dir.c_str()));
    s.allowed_dirs.push_back(*real);
  }
  int port = s.opt.port;
  if (port == 0) {
    port = s.svr.bind_to_any_port(s.opt.host);
    if (port <= 0) return io_error(strformat("cannot listen on %s (any port)", s.opt.host.c_str()));
  } else if (!s.svr.bind_to_port(s.opt.host, port)) {
    return io_error(strformat("cannot listen on %s:%d (address in use, or not an address of this machine?)",
                              s.opt.host.c_str(), port));
  }
  s.svr.widen_backlog(1024);
  s.port = port;
  return port;
}

void HttpServer::run() {
  Impl& s = *impl_;
  s.run_active = true;
  if (!s.stop_requested) s.svr.listen_after_bind();
  s.run_active = false;
}

void HttpServer::shutdown(std::chrono::seconds grace) {
  Impl& s = *impl_;
  s.draining = true;
  s.service.drain();
  {
    std::unique_lock<std::mutex> lock(s.active_mu);
    s.active_cv.wait_for(lock, grace, [&] { return s.active_jobs == 0; });
  }
  stop();
}

void HttpServer::stop() {
  // cpp-httplib's stop() does nothing before the accept loop runs: wait for it (or for run() to
  // see stop_requested and return) so that a stop racing with run() is not lost.
  Impl& s = *impl_;
  s.stop_requested = true;
  while (s.run_active && !s.svr.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  s.svr.stop();
  if (s.port > 0) {
    std::lock_guard<std::mutex> lock(s.busy_mu);
    wake_idle_connections(s.port, s.busy);
  }
}

bool HttpServer::is_running() const { return impl_->svr.is_running(); }

const ServerMetrics& HttpServer::metrics() const { return impl_->metrics; }

}  // namespace nb::serve
