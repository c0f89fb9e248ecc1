// The OpenAI-compatible HTTP server over a serve::Service (cpp-httplib underneath):
//
//   POST /v1/completions, /v1/chat/completions   generation (JSON or SSE with stream: true)
//   GET  /v1/models                               the base model and each adapter (vLLM's format)
//   POST /v1/load_lora_adapter, /v1/unload_lora_adapter   adapters at run time (--allowed-adapter-dir)
//   GET  /health, /metrics (Prometheus), /        (the web page)
//
// Threads: each connection is served by one worker of a pool (a stream holds its worker for its
// whole life, so the pool is sized for the concurrent streams). Workers tokenize, submit to the
// Service, then wait on a per-request queue that the Service's observers fill from the engine
// thread; detokenization and stop strings run on the worker, never on the engine thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "io/chat_template/chat_template.h"
#include "io/tokenizer/tokenizer.h"
#include "serve/metrics.h"
#include "serve/service.h"

namespace nb::serve {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                 // 0: any free port (bind() returns it)
  std::string api_key;             // "": no authentication; else /v1/* needs "Authorization: Bearer KEY"
  std::string served_model_name;   // the base model's id in `model` fields and /v1/models
  // Run-time adapter loading (and unloading) is allowed for paths that resolve (after symlinks)
  // inside one of these directories; empty: refused with 403.
  std::vector<std::string> allowed_adapter_dirs;
  size_t max_body_bytes = size_t{8} << 20;  // larger bodies: 413
  int threads = 256;               // HTTP workers: open connections and streams served at once
  int keep_alive_seconds = 10;     // an idle keep-alive connection is closed after this
  int io_timeout_seconds = 60;     // one blocking read or write of a connection
};

// What the server needs of the model besides the Service: the tokenizer (null: token-id prompts
// only) and the chat template (null: chat refused).
struct ModelAssets {
  std::optional<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat_template;
};

class HttpServer {
 public:
  // `service` must outlive the server.
  HttpServer(Service& service, ModelAssets assets, HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket (not yet accepting); returns the port. Errors: the address is in
  // use, an allowed adapter directory does not exist.
  Result<int> bind();
  // Accepts and serves connections until shutdown(). Call after bind().
  void run();
  // Graceful stop, from any thread: new generation requests get 503, Service::drain() lets every
  // queued and running request finish, their responses are written (up to `grace`), then the
  // listening socket closes and run() returns.
  void shutdown(std::chrono::seconds grace = std::chrono::seconds(60));
  // Immediate stop (streams end where they are).
  void stop();
  bool is_running() const;

  const ServerMetrics& metrics() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nb::serve
