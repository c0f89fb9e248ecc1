// nibble serve: the OpenAI-compatible HTTP server (src/serve) over the continuous-batching engine.
// Start-up: load the model and the --lora adapters, size the KV cache, print its capacity and the
// URL; then serve until SIGINT/SIGTERM, which drains (no new requests, running ones finish).
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "core/mmap.h"
#include "serve/engine_service.h"
#include "serve/http_server.h"
#include "tools/nibble/cli.h"
#include "tools/nibble/engine_args.h"

namespace nb::cli {
namespace {

const char* kUsage =
    "usage: nibble serve MODEL_DIR [--lora NAME=DIR ...] [--host H] [--port P] [--api-key KEY]\n"
    "                    [--served-model-name NAME] [--allowed-adapter-dir DIR ...] [--max-num-seqs N]\n"
    "                    [--max-num-batched-tokens T] [--max-lora-rank R] [engine options]\n"
    "\n"
    "Serves the model over an OpenAI-compatible HTTP API: POST /v1/completions, /v1/chat/completions\n"
    "(stream: true for server-sent events), GET /v1/models, POST /v1/load_lora_adapter and\n"
    "/v1/unload_lora_adapter (vLLM's bodies), GET /health, /metrics (Prometheus) and / (a chat page).\n"
    "A request picks an adapter with its `model` field: the served model name is the base model, an\n"
    "adapter's name selects that adapter. SIGINT/SIGTERM stop accepting requests, let the running\n"
    "ones finish, and exit 0 (a second signal exits at once).\n\n"
    "options:\n"
    "  --host H                     address to listen on (default 127.0.0.1; 0.0.0.0 for all)\n"
    "  --port P                     TCP port (default 8000; 0 = any free port, printed in the ready line)\n"
    "  --api-key KEY                require 'Authorization: Bearer KEY' on /v1/* (default: the\n"
    "                               NIBBLE_API_KEY environment variable; unset = no key)\n"
    "  --served-model-name NAME     the base model's name in requests and /v1/models (default: the\n"
    "                               basename of MODEL_DIR)\n"
    "  --chat-template FILE         Jinja chat template instead of the model's own\n"
    "  --allowed-adapter-dir DIR    allow /v1/load_lora_adapter (and unload) for adapters whose path\n"
    "                               resolves, after symlinks, inside DIR (repeatable; default: refused)\n"
    "  --max-lora-rank R            refuse adapters of a larger rank (default 0 = no limit)\n"
    "  --max-num-seqs N             sequences in one engine step (default 256)\n"
    "  --max-num-batched-tokens T   new tokens in one engine step (default 2048)\n"
    "  --kv-cache-tokens N          KV-cache capacity in tokens (default: 8 x --max-model-len, or\n"
    "                               --gpu-memory-fraction on CUDA)\n"
    "  --no-prefix-caching          do not reuse the KV blocks of shared prompt prefixes\n"
    "  --max-body-bytes N           larger request bodies get 413 (default 8388608)\n"
    "  --http-threads N             HTTP workers; each open connection or stream holds one (default\n"
    "                               max(256, --max-num-seqs + 16), at most 1000)\n"
    "\n"
    "NIBBLE_THREADS sets the CPU backend's threads.\n\n"
    "engine options:\n";

// --lora NAME=DIR (a bare DIR is named after its folder), as generate's load_adapters_from reads it.
Result<std::vector<std::pair<std::string, std::string>>> parse_loras(const Args& args) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& spec : args.get_all("lora")) {
    std::string name, dir;
    const size_t eq = spec.find('=');
    if (eq == std::string::npos) {
      dir = spec;
      std::string trimmed = dir;
      while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
      const size_t slash = trimmed.find_last_of('/');
      name = slash == std::string::npos ? trimmed : trimmed.substr(slash + 1);
    } else {
      name = spec.substr(0, eq);
      dir = spec.substr(eq + 1);
    }
    if (name.empty() || dir.empty()) return invalid_argument(strformat("--lora expects NAME=DIR, got '%s'", spec.c_str()));
    out.emplace_back(name, dir);
  }
  return out;
}

Result<int64_t> int_in(const Args& args, const char* name, int64_t def, int64_t lo, int64_t hi) {
  NB_ASSIGN_OR_RETURN(int64_t v, args.get_int(name, def));
  if (v < lo || v > hi)
    return invalid_argument(strformat("--%s must be in [%lld, %lld], got %lld", name, static_cast<long long>(lo),
                                      static_cast<long long>(hi), static_cast<long long>(v)));
  return v;
}

Result<serve::EngineServiceOptions> service_options(const Args& args, const std::string& model_dir) {
  serve::EngineServiceOptions o;
  NB_ASSIGN_OR_RETURN(o.engine, engine_options_from(args, model_dir));
  NB_ASSIGN_OR_RETURN(int64_t seqs, int_in(args, "max-num-seqs", 256, 1, 4096));
  NB_ASSIGN_OR_RETURN(o.max_num_batched_tokens, int_in(args, "max-num-batched-tokens", 2048, 1, int64_t{1} << 24));
  NB_ASSIGN_OR_RETURN(int64_t rank, int_in(args, "max-lora-rank", 0, 0, 1 << 16));
  NB_ASSIGN_OR_RETURN(o.engine.max_kv_tokens, int_in(args, "kv-cache-tokens", 0, 0, int64_t{1} << 40));
  o.max_num_seqs = static_cast<int>(seqs);
  o.max_lora_rank = static_cast<int>(rank);
  o.prefix_caching = !args.has("no-prefix-caching");
  NB_ASSIGN_OR_RETURN(o.loras, parse_loras(args));
  return o;
}

Result<serve::HttpServerOptions> http_options(const Args& args, int max_num_seqs) {
  serve::HttpServerOptions o;
  o.host = args.get("host", "127.0.0.1");
  NB_ASSIGN_OR_RETURN(int64_t port, int_in(args, "port", 8000, 0, 65535));
  o.port = static_cast<int>(port);
  const char* env_key = std::getenv("NIBBLE_API_KEY");
  o.api_key = args.has("api-key") ? args.get("api-key") : (env_key ? env_key : "");
  o.served_model_name = args.get("served-model-name", "");
  o.allowed_adapter_dirs = args.get_all("allowed-adapter-dir");
  NB_ASSIGN_OR_RETURN(int64_t body, int_in(args, "max-body-bytes", int64_t{8} << 20, 1024, int64_t{1} << 32));
  o.max_body_bytes = static_cast<size_t>(body);
  // cpp-httplib serves sockets below FD_SETSIZE (1024) only, so more workers would never be used.
  const int64_t default_threads = std::min(1000, std::max(256, max_num_seqs + 16));
  NB_ASSIGN_OR_RETURN(int64_t threads, int_in(args, "http-threads", default_threads, 8, 1000));
  o.threads = static_cast<int>(threads);
  return o;
}

Result<serve::ModelAssets> load_assets(const Args& args, const std::string& model_dir) {
  serve::ModelAssets a;
  if (file_exists(path_join(model_dir, "tokenizer.json"))) {
    NB_ASSIGN_OR_RETURN(Tokenizer t, Tokenizer::load(model_dir));
    a.tokenizer = std::move(t);
  } else {
    std::fprintf(stderr, "nibble serve: %s has no tokenizer.json: prompts must be token ids, chat is refused\n",
                 model_dir.c_str());
  }
  Result<ChatTemplate> tmpl = load_chat_template(model_dir, args.get("chat-template"));
  if (tmpl.is_ok()) {
    a.chat_template = std::move(tmpl).value();
  } else if (args.has("chat-template")) {
    return tmpl.status();
  } else if (a.tokenizer) {
    std::fprintf(stderr, "nibble serve: no chat template (%s): /v1/chat/completions is refused\n",
                 tmpl.status().message().c_str());
  }
  return a;
}

// SIGINT/SIGTERM are blocked in every thread (the mask is set before any thread starts) and taken
// here by sigwait: the first drains the server; then they are unblocked in this thread, so a second
// one ends the process at once. SIGUSR1 only wakes the thread up when the server stopped by itself.
void wait_for_signal(serve::HttpServer* server, sigset_t set) {
  int sig = 0;
  if (sigwait(&set, &sig) != 0 || sig == SIGUSR1) return;
  std::fprintf(stderr, "\nnibble serve: %s: draining (no new requests; running ones finish; again to quit now)\n",
               sig == SIGINT ? "SIGINT" : "SIGTERM");
  sigset_t unblock;
  sigemptyset(&unblock);
  sigaddset(&unblock, SIGINT);
  sigaddset(&unblock, SIGTERM);
  pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
  server->shutdown();
}

int run(const std::vector<std::string>& argv) {
  auto parsed = Args::parse(argv, {"reference-kernels", "quiet", "no-cuda-graphs", "no-prefix-caching"});
  if (!parsed.is_ok()) return fail("serve", parsed.status());
  Args& args = *parsed;
  std::vector<std::string> known = {"host", "port", "api-key", "served-model-name", "chat-template",
                                    "allowed-adapter-dir", "max-lora-rank", "max-num-seqs", "max-num-batched-tokens",
                                    "kv-cache-tokens", "no-prefix-caching", "max-body-bytes", "http-threads"};
  known.insert(known.end(), kEngineOptions.begin(), kEngineOptions.end());
  if (Status s = args.check_known(known); !s.is_ok()) return fail("serve", s);
  if (args.positional().size() != 1)
    return fail("serve", invalid_argument(std::string("expected one MODEL_DIR\n") + kUsage));
  const std::string model_dir = args.positional()[0];

  auto sopts = service_options(args, model_dir);
  if (!sopts.is_ok()) return fail("serve", sopts.status());
  auto hopts = http_options(args, sopts->max_num_seqs);
  if (!hopts.is_ok()) return fail("serve", hopts.status());
  auto assets = load_assets(args, model_dir);
  if (!assets.is_ok()) return fail("serve", assets.status());

  // Before any thread exists, so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto service = serve::make_engine_service(*sopts);
  if (!service.is_ok()) return fail("serve", service.status());
  const serve::ModelInfo info = (*service)->model_info();
  std::printf("nibble serve: %s (%s) on %s; %zu adapter(s) loaded\n", model_dir.c_str(), info.architecture.c_str(),
              info.device.c_str(), sopts->loras.size());
  std::printf("KV cache size: %lld tokens; maximum concurrency for %d tokens per request: %.2fx\n",
              static_cast<long long>(info.kv_tokens), info.max_model_len,
              info.max_model_len > 0 ? static_cast<double>(info.kv_tokens) / info.max_model_len : 0.0);

  serve::HttpServer server(**service, std::move(*assets), *hopts);
  auto port = server.bind();
  if (!port.is_ok()) return fail("serve", port.status());
  std::thread signal_thread(wait_for_signal, &server, signals);
  std::printf("nibble serve: ready on http://%s:%d\n", hopts->host.c_str(), *port);
  std::fflush(stdout);
  server.run();
  pthread_kill(signal_thread.native_handle(), SIGUSR1);  // ignored once a signal started the drain
  signal_thread.join();
  std::printf("nibble serve: stopped\n");
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND(serve_cmd, "serve", "OpenAI-compatible HTTP server (completions, chat, adapters, metrics)",
                    std::string(kUsage) + kEngineOptionsHelp, run);

}  // namespace nb::cli
