#include "tools/nibble/bench_serve.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "serve/engine_service.h"
#include "tools/nibble/bench_lora.h"

namespace nb::cli {
namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Times one request: submit, first token, last token.
class Timer : public serve::RequestObserver {
 public:
  explicit Timer(double submitted) : submitted_(submitted) {}
  void on_tokens(const std::vector<serve::TokenOut>& t) override {
    std::lock_guard<std::mutex> lock(mu_);
    const double n = now();
    if (tokens_ == 0) first_ = n;
    last_ = n;
    tokens_ += static_cast<int64_t>(t.size());
  }
  void on_finish(const std::string& reason, const std::string& error) override {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    error_ = reason == "error" ? error : "";
    end_ = now();
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_; });
  }
  double ttft() const { return first_ - submitted_; }
  double tpot() const { return tokens_ > 1 ? (last_ - first_) / static_cast<double>(tokens_ - 1) : 0; }
  double e2e() const { return end_ - submitted_; }
  int64_t tokens() const { return tokens_; }
  const std::string& error() const { return error_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  double submitted_, first_ = 0, last_ = 0, end_ = 0;
  int64_t tokens_ = 0;
  bool done_ = false;
  std::string error_;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

std::vector<int32_t> random_prompt(int64_t n, int64_t vocab, std::mt19937& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return ids;
}

struct Load {
  int64_t streams = 0, tokens = 0;
  double seconds = 0;
  std::vector<double> ttft, tpot, e2e;
  std::string error;
};

// `streams` threads, each submitting `requests` requests one after the other.
Load run_load(serve::Service& svc, int64_t streams, int64_t requests, const std::vector<std::string>& adapters,
              const ServeBenchOptions& b, int64_t vocab, uint32_t seed) {
  Load load;
  load.streams = streams;
  std::mutex mu;
  std::vector<std::thread> threads;
  const double t0 = now();
  for (int64_t s = 0; s < streams; ++s) {
    threads.emplace_back([&, s] {
      std::mt19937 rng(seed + static_cast<uint32_t>(s));
      for (int64_t r = 0; r < requests; ++r) {
        serve::GenerateRequest req;
        req.prompt = random_prompt(b.prompt_tokens, vocab, rng);
        req.max_tokens = static_cast<int>(b.decode_tokens);
        req.sampling.temperature = 0;
        req.adapter = adapters.empty() ? "" : adapters[static_cast<size_t>(s + r) % adapters.size()];
        auto timer = std::make_shared<Timer>(now());
        auto id = svc.submit(req, timer);
        if (!id.is_ok()) {
          std::lock_guard<std::mutex> lock(mu);
          load.error = id.status().to_string();
          return;
        }
        timer->wait();
        std::lock_guard<std::mutex> lock(mu);
        if (!timer->error().empty()) load.error = timer->error();
        load.tokens += timer->tokens();
        load.ttft.push_back(timer->ttft());
        load.tpot.push_back(timer->tpot());
        load.e2e.push_back(timer->e2e());
      }
    });
  }
  for (auto& t : threads) t.join();
  load.seconds = now() - t0;
  return load;
}

// Engine::generate with `rows` requests in one batch: decode tokens/s (the `nibble bench` figure).
Result<double> engine_decode(engine::Engine& e, int64_t rows, const std::vector<std::string>& adapters,
                             const ServeBenchOptions& b, std::mt19937& rng) {
  std::vector<engine::GenerationRequest> reqs(static_cast<size_t>(rows));
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].prompt = random_prompt(b.prompt_tokens, e.config().vocab_size, rng);
    reqs[i].adapter = adapters.empty() ? "" : adapters[i % adapters.size()];
    reqs[i].max_tokens = 2;
  }
  NB_RETURN_IF_ERROR(e.generate(reqs).status());  // warm-up
  for (auto& r : reqs) r.max_tokens = static_cast<int>(b.decode_tokens);
  engine::GenerationStats st;
  NB_RETURN_IF_ERROR(e.generate(reqs, {}, &st).status());
  return static_cast<double>(b.decode_tokens - 1) * static_cast<double>(rows) / st.decode_seconds;
}

}  // namespace

Result<ServeBenchOptions> serve_bench_options(const Args& args, int64_t prompt_tokens, int64_t decode_tokens) {
  ServeBenchOptions o;
  NB_ASSIGN_OR_RETURN(o.concurrency, parse_int_list(args.get("concurrency", "1,8,32")));
  NB_ASSIGN_OR_RETURN(o.loras, parse_int_list(args.get("serve-loras", "0")));
  NB_ASSIGN_OR_RETURN(o.requests_per_stream, args.get_int("serve-requests", 3));
  for (int64_t c : o.concurrency)
    if (c < 1 || c > 1024) return invalid_argument(strformat("--concurrency: %lld is not in [1, 1024]", static_cast<long long>(c)));
  for (int64_t l : o.loras)
    if (l < 0 || l > 64) return invalid_argument(strformat("--serve-loras: %lld is not in [0, 64]", static_cast<long long>(l)));
  if (o.requests_per_stream < 1 || o.requests_per_stream > 1000)
    return invalid_argument("--serve-requests must be in [1, 1000]");
  if (decode_tokens < 2) return invalid_argument("--serve needs --decode-tokens of at least 2");
  o.prompt_tokens = prompt_tokens;
  o.decode_tokens = decode_tokens;
  return o;
}

Status run_serve_bench(const engine::EngineOptions& options, const engine::RandomWeights& random,
                       const ServeBenchOptions& b, const std::string& shape) {
  const int64_t max_c = *std::max_element(b.concurrency.begin(), b.concurrency.end());
  const int64_t max_l = *std::max_element(b.loras.begin(), b.loras.end());
  engine::EngineOptions eo = options;
  eo.verbose = false;
  eo.max_loras = std::max<int>(eo.max_loras, static_cast<int>(max_l));
  eo.max_model_len = static_cast<int>(b.prompt_tokens + b.decode_tokens + 16);
  eo.max_kv_tokens = max_c * (b.prompt_tokens + b.decode_tokens + 32);
  NB_ASSIGN_OR_RETURN(TempDir dir, TempDir::create("serve"));
  std::vector<std::pair<std::string, std::string>> adapters;
  for (int64_t i = 0; i < max_l; ++i) {
    const std::string name = strformat("bench%lld", static_cast<long long>(i));
    const std::string path = dir.path() + "/" + name;
    NB_RETURN_IF_ERROR(write_dummy_adapter(path, random.config, 16, 1000 + static_cast<uint64_t>(i)).status());
    adapters.emplace_back(name, path);
  }
  auto names = [&](int64_t l) {
    std::vector<std::string> v;
    for (int64_t i = 0; i < l; ++i) v.push_back(adapters[static_cast<size_t>(i)].first);
    return v;
  };
  // The engine alone: every concurrency as one batch.
  std::fprintf(stderr, "bench --serve: building %s twice (engine alone, then the service)...\n", shape.c_str());
  std::map<std::pair<int64_t, int64_t>, double> engine_tps;
  {
    NB_ASSIGN_OR_RETURN(std::unique_ptr<engine::Engine> e, engine::Engine::create_random(eo, random));
    for (const auto& [name, path] : adapters) NB_RETURN_IF_ERROR(e->load_adapter(name, path));
    std::mt19937 rng(5);
    for (int64_t l : b.loras)
      for (int64_t c : b.concurrency) {
        NB_ASSIGN_OR_RETURN(double tps, engine_decode(*e, c, names(l), b, rng));
        engine_tps[{l, c}] = tps;
      }
  }
  serve::EngineServiceOptions so;
  so.engine = eo;
  so.max_num_seqs = static_cast<int>(std::max<int64_t>(max_c, 8));
  so.max_num_batched_tokens = std::max<int64_t>(2048, b.prompt_tokens);
  so.loras = adapters;
  NB_ASSIGN_OR_RETURN(std::unique_ptr<engine::ModelRunner> runner, engine::ModelRunner::create(eo, &random));
  NB_ASSIGN_OR_RETURN(std::unique_ptr<serve::Service> svc, serve::make_engine_service(std::move(runner), so));
  const int64_t vocab = random.config.vocab_size;
  std::printf("\n| shape | device | streams | adapters | requests | tokens/s (whole run) | TTFT p50 ms | TTFT p99 ms | "
              "TPOT p50 ms | TPOT p99 ms | e2e p50 s | service decode tokens/s | engine batch decode tokens/s | "
              "service / engine |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (int64_t l : b.loras) {
    for (int64_t c : b.concurrency) {
      // Warm-up at this concurrency (workspaces, recorded decode steps), then the measured run.
      Load warm = run_load(*svc, c, 1, names(l), ServeBenchOptions{{}, {}, 1, b.prompt_tokens, 4}, vocab, 77);
      if (!warm.error.empty()) return internal_error("serve bench warm-up: " + warm.error);
      Load ld = run_load(*svc, c, b.requests_per_stream, names(l), b, vocab, static_cast<uint32_t>(1000 * c + l));
      if (!ld.error.empty()) return internal_error("serve bench: " + ld.error);
      const double tpot = percentile(ld.tpot, 0.5), decode_tps = tpot > 0 ? static_cast<double>(c) / tpot : 0;
      const double eng = engine_tps[{l, c}];
      std::printf("| %s | %s | %lld | %lld | %zu | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f | %.1f | %.1f | %.0f%% |\n",
                  shape.c_str(), eo.device.c_str(), static_cast<long long>(c), static_cast<long long>(l),
                  ld.e2e.size(), static_cast<double>(ld.tokens) / ld.seconds, 1e3 * percentile(ld.ttft, 0.5),
                  1e3 * percentile(ld.ttft, 0.99), 1e3 * tpot, 1e3 * percentile(ld.tpot, 0.99), percentile(ld.e2e, 0.5),
                  decode_tps, eng, eng > 0 ? 100.0 * decode_tps / eng : 0.0);
      std::fflush(stdout);
    }
  }
  svc->drain();
  return Status::ok();
}

}  // namespace nb::cli
