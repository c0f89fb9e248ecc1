// The continuous-batching loop: one thread owns the engine and the scheduler. Other threads hand it
// requests, cancellations and adapter unloads through a mutex-guarded inbox; it runs
//   inbox -> scheduler.add / finish -> schedule -> engine.run_rows -> sample -> complete -> observers
// until drained. Adapters are validated and registered on the caller's thread (the registry is
// thread-safe); everything that touches the device happens on the loop thread.
#include "serve/engine_service.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

#include "core/log.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"

namespace nb::serve {

namespace {

struct Request {
  uint64_t id = 0;
  GenerateRequest req;
  std::shared_ptr<RequestObserver> observer;
  uint64_t seed = 0;
  std::unordered_map<int32_t, int> counts;  // generated tokens (penalties)
  int generated = 0;
};

struct AdapterCounters {
  int64_t requests = 0, tokens = 0;
};

class EngineService final : public Service {
 public:
  EngineService(std::unique_ptr<engine::ModelRunner> engine, const EngineServiceOptions& options);
  ~EngineService() override { drain(); }

  ModelInfo model_info() const override { return info_; }
  Result<uint64_t> submit(GenerateRequest request, std::shared_ptr<RequestObserver> observer) override;
  void cancel(uint64_t id) override;
  Status load_adapter(const std::string& name, const std::string& dir) override;
  Status unload_adapter(const std::string& name) override;
  std::vector<AdapterInfo> adapters() const override;
  ServiceStats stats() const override;
  void drain() override;

 private:
  void loop();
  void loader();  // reads evicted adapters back from disk, off the engine thread
  bool has_work_locked() const;
  // Into the scheduler, or (adapter not in host memory) aside until the loader has read it.
  void admit(std::unique_ptr<Request> r);
  void take_inbox();
  void run_unloads();
  void run_step(const engine::ScheduledStep& step);
  void fail_step(const engine::ScheduledStep& step, const Status& error);
  // Ends request `id` (already out of the scheduler or about to be taken out by the caller).
  void end(uint64_t id, const std::string& reason, const std::string& error = "");
  Status validate(const GenerateRequest& r) const;

  std::unique_ptr<engine::ModelRunner> engine_;
  engine::Scheduler sched_;
  EngineServiceOptions options_;
  ModelInfo info_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Request>> incoming_;
  std::vector<uint64_t> cancels_;
  std::set<std::string> unloading_;           // invisible to new requests, removed once unused
  std::map<std::string, int> adapter_users_;  // live requests per adapter (queued or running)
  std::map<std::string, AdapterCounters> counters_;
  engine::SchedulerStats sched_stats_;
  int64_t prompt_tokens_ = 0, generated_tokens_ = 0;
  bool draining_ = false;
  uint64_t next_id_ = 1;
  std::mt19937_64 seeds_{std::random_device{}()};

  std::map<uint64_t, std::unique_ptr<Request>> active_;  // the loop thread's: queued, waiting or running
  // Requests whose adapter is being read from disk (ids in active_), and the loader's queues.
  std::map<std::string, std::vector<uint64_t>> awaiting_;      // loop thread
  std::deque<std::string> to_load_;                            // guarded by mu_
  std::vector<std::pair<std::string, Result<LoraAdapter>>> loaded_;  // guarded by mu_
  std::condition_variable loader_cv_;
  bool loader_stop_ = false;                                   // guarded by mu_
  std::thread thread_, loader_thread_;
};

engine::SchedulerConfig scheduler_config(const engine::ModelRunner& e, const EngineServiceOptions& o) {
  engine::SchedulerConfig c;
  c.num_blocks = e.kv_blocks();
  c.block_size = e.kv_block_size();
  c.max_num_seqs = o.max_num_seqs;
  c.max_num_batched_tokens = o.max_num_batched_tokens;
  c.max_model_len = e.max_model_len();
  c.max_loras = e.adapter_registry().max_loras();
  c.prefix_caching = o.prefix_caching;
  return c;
}

EngineService::EngineService(std::unique_ptr<engine::ModelRunner> engine, const EngineServiceOptions& options)
    : engine_(std::move(engine)), sched_(scheduler_config(*engine_, options)), options_(options) {
  const ModelConfig& c = engine_->config();
  info_.model_dir = engine_->options().model_dir;
  info_.architecture = c.architecture;
  info_.vocab_size = c.vocab_size;
  info_.max_model_len = engine_->max_model_len();
  info_.kv_tokens = int64_t{engine_->kv_blocks()} * engine_->kv_block_size();
  info_.max_concurrency = static_cast<int>(info_.kv_tokens / std::max(1, info_.max_model_len));
  info_.max_loras = engine_->adapter_registry().max_loras();
  info_.device = engine_->options().device;
  sched_stats_ = sched_.stats();
  // The workspace for the largest step, taken now: memory is planned at start-up, and steps (and
  // their recorded graphs) never reallocate it later.
  engine_->model().reserve(options.max_num_batched_tokens,
                           std::min<int64_t>(options.max_num_seqs, options.max_num_batched_tokens));
  thread_ = std::thread([this] { loop(); });
  loader_thread_ = std::thread([this] { loader(); });
}

Status EngineService::validate(const GenerateRequest& r) const {
  const int64_t vocab = info_.vocab_size, len = static_cast<int64_t>(r.prompt.size());
  if (r.prompt.empty()) return invalid_argument("the prompt is empty");
  for (int32_t id : r.prompt)
    if (id < 0 || id >= vocab)
      return invalid_argument(strformat("prompt token id %d is outside the vocabulary [0, %lld)", id,
                                        static_cast<long long>(vocab)));
  if (r.max_tokens < 1) return invalid_argument(strformat("max_tokens must be at least 1, got %d", r.max_tokens));
  if (len + r.max_tokens > info_.max_model_len)
    return out_of_range(strformat("the prompt (%lld tokens) plus max_tokens (%d) is %lld tokens, more than the maximum "
                                  "model length %d", static_cast<long long>(len), r.max_tokens,
                                  static_cast<long long>(len + r.max_tokens), info_.max_model_len));
  const SamplingOptions& s = r.sampling;
  for (auto [name, v] : {std::pair{"temperature", s.temperature}, std::pair{"top_p", s.top_p},
                         std::pair{"min_p", s.min_p}, std::pair{"presence_penalty", s.presence_penalty},
                         std::pair{"frequency_penalty", s.frequency_penalty}})
    if (!std::isfinite(v)) return invalid_argument(strformat("%s must be a finite number", name));
  if (s.temperature < 0) return invalid_argument(strformat("temperature must be >= 0, got %g", s.temperature));
  if (!(s.top_p > 0 && s.top_p <= 1)) return invalid_argument(strformat("top_p must be in (0, 1], got %g", s.top_p));
  if (s.top_k < 0) return invalid_argument(strformat("top_k must be >= 0, got %d", s.top_k));
  if (!(s.min_p >= 0 && s.min_p <= 1)) return invalid_argument(strformat("min_p must be in [0, 1], got %g", s.min_p));
  if (s.logprobs > 20) return invalid_argument(strformat("logprobs must be at most 20, got %d", s.logprobs));
  for (int32_t id : r.stop_ids)
    if (id < 0 || id >= vocab)
      return invalid_argument(strformat("stop token id %d is outside the vocabulary [0, %lld)", id,
                                        static_cast<long long>(vocab)));
  return Status::ok();
}

Result<uint64_t> EngineService::submit(GenerateRequest request, std::shared_ptr<RequestObserver> observer) {
  NB_RETURN_IF_ERROR(validate(request));
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return unavailable("the server is shutting down");
  if (!request.adapter.empty() && (unloading_.count(request.adapter) || !engine_->adapter_registry().contains(request.adapter)))
    return not_found(strformat("adapter '%s' is not loaded", request.adapter.c_str()));
  auto r = std::make_unique<Request>();
  r->id = next_id_++;
  r->seed = request.sampling.seed ? *request.sampling.seed : seeds_();
  r->req = std::move(request);
  r->observer = std::move(observer);
  const uint64_t id = r->id;
  ++adapter_users_[r->req.adapter];
  ++counters_[r->req.adapter].requests;
  prompt_tokens_ += static_cast<int64_t>(r->req.prompt.size());
  incoming_.push_back(std::move(r));
  cv_.notify_one();
  return id;
}

void EngineService::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.push_back(id);
  cv_.notify_one();
}

Status EngineService::load_adapter(const std::string& name, const std::string& dir) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return unavailable("the server is shutting down");
    if (unloading_.count(name))
      return invalid_argument(strformat("adapter '%s' is being unloaded (requests still use it); try again later",
                                        name.c_str()));
  }
  return engine_->register_adapter(name, dir, options_.max_lora_rank);
}

Status EngineService::unload_adapter(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  if (unloading_.count(name) || !engine_->adapter_registry().contains(name))
    return not_found(strformat("adapter '%s' is not loaded", name.c_str()));
  unloading_.insert(name);
  cv_.notify_one();
  return Status::ok();
}

std::vector<AdapterInfo> EngineService::adapters() const {
  std::vector<AdapterInfo> out;
  const bool gpu = info_.device == "cuda";
  std::lock_guard<std::mutex> lock(mu_);
  for (const AdapterRegistry::State& s : engine_->adapter_registry().states()) {
    if (unloading_.count(s.name)) continue;
    AdapterInfo a;
    a.name = s.name;
    a.path = s.dir;
    a.residency = s.slot >= 0 && gpu ? "gpu" : s.resident ? "cpu" : "disk";
    a.pinned = s.pinned;
    a.loads = s.loads;
    a.evictions = s.evictions;
    if (auto it = counters_.find(s.name); it != counters_.end()) {
      a.requests = it->second.requests;
      a.generated_tokens = it->second.tokens;
    }
    out.push_back(std::move(a));
  }
  return out;
}

ServiceStats EngineService::stats() const {
  ServiceStats s;
  s.adapters = adapters();
  std::lock_guard<std::mutex> lock(mu_);
  s.running = sched_stats_.running;
  s.waiting = sched_stats_.waiting + static_cast<int>(incoming_.size());
  s.kv_blocks_total = sched_stats_.blocks_total;
  s.kv_blocks_used = sched_stats_.blocks_used;
  s.prefix_cache_queries = sched_stats_.prefix_queries;
  s.prefix_cache_hits = sched_stats_.prefix_hits;
  s.preemptions = sched_stats_.preemptions;
  s.prompt_tokens = prompt_tokens_;
  s.generated_tokens = generated_tokens_;
  return s;
}

void EngineService::drain() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    loader_stop_ = true;
    loader_cv_.notify_one();
  }
  if (loader_thread_.joinable()) loader_thread_.join();
}

void EngineService::loader() {
  for (;;) {
    std::string name;
    {
      std::unique_lock<std::mutex> lock(mu_);
      loader_cv_.wait(lock, [&] { return loader_stop_ || !to_load_.empty(); });
      if (to_load_.empty()) return;  // stopping
      name = to_load_.front();
      to_load_.pop_front();
    }
    Result<LoraAdapter> adapter = engine_->read_adapter(name);
    std::lock_guard<std::mutex> lock(mu_);
    loaded_.emplace_back(name, std::move(adapter));
    cv_.notify_one();
  }
}

// ---- the loop -------------------------------------------------------------------------------------

bool EngineService::has_work_locked() const {
  if (!incoming_.empty() || !cancels_.empty() || !loaded_.empty() || !sched_.idle()) return true;
  for (const std::string& n : unloading_)
    if (adapter_users_.count(n) == 0 || adapter_users_.at(n) == 0) return true;
  return false;
}

void EngineService::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      // awaiting_ (requests whose adapter the loader is reading) is this thread's own state.
      cv_.wait(lock, [&] { return has_work_locked() || (draining_ && awaiting_.empty()); });
      if (draining_ && awaiting_.empty() && !has_work_locked()) break;
    }
    take_inbox();
    run_unloads();
    if (sched_.idle()) {  // nothing to run (perhaps requests waiting for their adapters): wait
      std::lock_guard<std::mutex> lock(mu_);
      sched_stats_ = sched_.stats();
      continue;
    }
    const engine::ScheduledStep step = sched_.schedule();
    if (!step.empty()) {
      run_step(step);
    } else if (!sched_.idle()) {
      // Sequences wait but none can be placed (a consistent scheduler never gets here): fail them
      // with a message rather than spin.
      NB_LOG_ERROR("serve: the scheduler placed none of its %d waiting sequences", sched_.stats().waiting);
      std::vector<uint64_t> stuck;
      for (const auto& [id, r] : active_)
        if (sched_.has(id)) stuck.push_back(id);
      for (uint64_t id : stuck) {
        sched_.finish(id);
        end(id, "error", "internal error: the scheduler could not place this request");
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    sched_stats_ = sched_.stats();
  }
}

void EngineService::take_inbox() {
  std::deque<std::unique_ptr<Request>> incoming;
  std::vector<uint64_t> cancels;
  std::vector<std::pair<std::string, Result<LoraAdapter>>> loaded;
  {
    std::lock_guard<std::mutex> lock(mu_);
    incoming.swap(incoming_);
    cancels.swap(cancels_);
    loaded.swap(loaded_);
  }
  for (auto& [name, adapter] : loaded) {
    // Between steps no slot is held, so the cache can make room.
    const Status status = adapter.is_ok() ? engine_->restore_adapter(name, std::move(adapter).value()) : adapter.status();
    std::vector<uint64_t> ids = std::move(awaiting_[name]);
    awaiting_.erase(name);
    for (uint64_t id : ids) {
      if (!active_.count(id)) continue;  // cancelled meanwhile
      if (!status.is_ok()) {
        end(id, "error", status.message());
        continue;
      }
      const Request& r = *active_.at(id);
      Status s = sched_.add(id, r.req.prompt, r.req.adapter, r.req.max_tokens);
      if (!s.is_ok()) end(id, "error", s.message());
    }
  }
  for (auto& r : incoming) admit(std::move(r));
  for (uint64_t id : cancels) {
    if (!active_.count(id)) continue;
    sched_.finish(id);  // ignores ids it does not hold (waiting for their adapter)
    for (auto& [name, ids] : awaiting_) ids.erase(std::remove(ids.begin(), ids.end(), id), ids.end());
    end(id, "abort");
  }
}

void EngineService::admit(std::unique_ptr<Request> r) {
  const uint64_t id = r->id;
  const std::string adapter = r->req.adapter;
  active_[id] = std::move(r);
  if (!adapter.empty() && !engine_->adapter_registry().is_resident(adapter)) {
    auto [it, first] = awaiting_.try_emplace(adapter);
    it->second.push_back(id);
    if (first) {
      std::lock_guard<std::mutex> lock(mu_);
      to_load_.push_back(adapter);
      loader_cv_.notify_one();
    }
    return;
  }
  const Request& q = *active_.at(id);
  Status s = sched_.add(id, q.req.prompt, q.req.adapter, q.req.max_tokens);
  if (!s.is_ok()) end(id, "error", s.message());
}

// An adapter being unloaded leaves once no live request uses it (the registry refuses removal while
// a batch holds its slot; between steps none does).
void EngineService::run_unloads() {
  std::vector<std::string> ready;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& n : unloading_)
      if (adapter_users_[n] == 0) ready.push_back(n);
  }
  for (const std::string& n : ready) {
    Status s = engine_->unload_adapter(n);
    if (!s.is_ok()) NB_LOG_WARN("serve: unloading adapter '%s': %s", n.c_str(), s.to_string().c_str());
    std::lock_guard<std::mutex> lock(mu_);
    unloading_.erase(n);
    adapter_users_.erase(n);
  }
}

void EngineService::run_step(const engine::ScheduledStep& step) {
  std::vector<engine::ModelRunner::RowInput> rows;
  rows.reserve(step.seqs.size());
  for (const engine::ScheduledSeq& s : step.seqs)
    rows.push_back(engine::ModelRunner::RowInput{&s.tokens, s.start, &s.block_table, s.adapter, s.sample, false});
  Result<TensorView> logits = engine_->run_rows(rows);
  if (!logits.is_ok()) return fail_step(step, logits.status());
  const int64_t vocab = info_.vocab_size;
  std::vector<int32_t> sampled(step.seqs.size(), -1);
  std::vector<TokenOut> outs(step.seqs.size());
  // Plain greedy rows (no penalties, no log-probabilities) are picked where the logits are: only the
  // ids cross to the host (on a GPU, R x vocab floats per step would otherwise).
  bool plain = true;
  int64_t rows_out = 0;
  for (const engine::ScheduledSeq& s : step.seqs) {
    if (!s.sample) continue;
    ++rows_out;
    const SamplingOptions& so = active_.at(s.id)->req.sampling;
    plain &= so.temperature == 0.f && so.logprobs < 0 && so.presence_penalty == 0.f && so.frequency_penalty == 0.f;
  }
  if (plain && rows_out > 0) {
    std::vector<int32_t> ids(static_cast<size_t>(rows_out));
    ops::SamplingParams greedy;
    greedy.temperature = 0.f;
    TensorView lv = *logits;
    lv.shape[0] = rows_out;
    engine_->backend().sample(ids.data(), lv, {greedy}, 0);
    size_t k = 0;
    for (size_t i = 0; i < step.seqs.size(); ++i) {
      if (!step.seqs[i].sample) continue;
      sampled[i] = ids[k++];
      outs[i].id = sampled[i];
    }
  }
  std::vector<float> host;
  if (!plain) {
    host.resize(static_cast<size_t>(logits->numel()));
    engine_->backend().download(host.data(), logits->data, logits->nbytes());
  }
  size_t row = 0;
  for (size_t i = 0; i < step.seqs.size() && !plain; ++i) {
    if (!step.seqs[i].sample) continue;
    Request& r = *active_.at(step.seqs[i].id);
    const SamplingOptions& so = r.req.sampling;
    engine::SampleOptions o;
    o.temperature = so.temperature;
    o.top_p = so.top_p;
    o.top_k = so.top_k;
    o.min_p = so.min_p;
    o.seed = r.seed;
    o.step = static_cast<uint64_t>(r.generated);
    o.presence_penalty = so.presence_penalty;
    o.frequency_penalty = so.frequency_penalty;
    o.counts = &r.counts;
    o.logprobs = so.logprobs;
    engine::SampleResult res = engine::sample_token(host.data() + row * static_cast<size_t>(vocab), vocab, o);
    ++row;
    sampled[i] = res.id;
    outs[i] = TokenOut{res.id, res.logprob, std::move(res.top)};
  }
  const std::vector<engine::SeqId> finished = sched_.complete(step, sampled);
  for (size_t i = 0; i < step.seqs.size(); ++i) {
    if (!step.seqs[i].sample) continue;
    const uint64_t id = step.seqs[i].id;
    Request& r = *active_.at(id);
    ++r.counts[sampled[i]];
    ++r.generated;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++generated_tokens_;
      ++counters_[r.req.adapter].tokens;
    }
    r.observer->on_tokens({outs[i]});
    const auto& stop = r.req.stop_ids;
    const bool stopped = std::find(stop.begin(), stop.end(), sampled[i]) != stop.end();
    const bool length = std::find(finished.begin(), finished.end(), id) != finished.end();
    if (stopped) {
      if (!length) sched_.finish(id);
      end(id, "stop");
    } else if (length) {
      end(id, "length");
    }
  }
  // Finished without a token of this step (cannot happen today; keep the bookkeeping exact).
  for (engine::SeqId id : finished)
    if (active_.count(id)) end(id, "length");
}

void EngineService::fail_step(const engine::ScheduledStep& step, const Status& error) {
  NB_LOG_ERROR("serve: a step of %zu sequences failed: %s", step.seqs.size(), error.to_string().c_str());
  // complete() with nothing sampled keeps the scheduler consistent, then every sequence of the step
  // ends with the error (the others keep running).
  const std::vector<engine::SeqId> finished = sched_.complete(step, std::vector<int32_t>(step.seqs.size(), -1));
  for (const engine::ScheduledSeq& s : step.seqs) {
    if (!active_.count(s.id)) continue;
    if (std::find(finished.begin(), finished.end(), s.id) == finished.end()) sched_.finish(s.id);
    end(s.id, "error", error.message());
  }
}

void EngineService::end(uint64_t id, const std::string& reason, const std::string& error) {
  auto it = active_.find(id);
  if (it == active_.end()) return;
  std::unique_ptr<Request> r = std::move(it->second);
  active_.erase(it);
  {
    std::lock_guard<std::mutex> lock(mu_);
    --adapter_users_[r->req.adapter];
  }
  r->observer->on_finish(reason, error);
}

}  // namespace

// A runner given to make_engine_service(runner, options) skips this (it was made already).
Status check_service_options(const EngineServiceOptions& options) {
  if (options.max_num_seqs < 1)
    return invalid_argument(strformat("--max-num-seqs must be at least 1, got %d", options.max_num_seqs));
  if (options.max_num_batched_tokens < 1)
    return invalid_argument(strformat("--max-num-batched-tokens must be at least 1, got %lld",
                                      static_cast<long long>(options.max_num_batched_tokens)));
  if (options.max_lora_rank < 0)
    return invalid_argument(strformat("--max-lora-rank must be >= 0, got %d", options.max_lora_rank));
  return Status::ok();
}

Result<std::unique_ptr<Service>> make_engine_service(const EngineServiceOptions& options) {
  NB_RETURN_IF_ERROR(check_service_options(options));
  NB_ASSIGN_OR_RETURN(std::unique_ptr<engine::ModelRunner> runner, engine::ModelRunner::create(options.engine));
  return make_engine_service(std::move(runner), options);
}

Result<std::unique_ptr<Service>> make_engine_service(std::unique_ptr<engine::ModelRunner> runner,
                                                     const EngineServiceOptions& options) {
  NB_RETURN_IF_ERROR(check_service_options(options));
  for (const auto& [name, dir] : options.loras)
    NB_RETURN_IF_ERROR(runner->register_adapter(name, dir, options.max_lora_rank));
  return std::unique_ptr<Service>(new EngineService(std::move(runner), options));
}

}  // namespace nb::serve
