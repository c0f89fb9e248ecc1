// A serve::Service without a model, for testing the HTTP layer: every request "generates" a fixed
// script of token ids (by default the prompt again, repeated), one token per step of a worker
// thread, honouring max_tokens, stop ids and cancel() as the real engine does. It records what it
// was asked, so tests can check what the server submitted and cancelled.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "serve/service.h"

namespace nb::serve::testing {

class FakeService final : public Service {
 public:
  explicit FakeService(std::chrono::milliseconds step = std::chrono::milliseconds(1)) : step_(step) {
    info_.model_dir = "/models/fake-model";
    info_.architecture = "FakeForCausalLM";
    info_.vocab_size = 4096;
    info_.max_model_len = 64;
    info_.kv_tokens = 1024;
    info_.max_concurrency = 16;
    info_.max_loras = 2;
    info_.device = "cpu";
    adapters_["kjv"] = AdapterInfo{"kjv", "/adapters/kjv", "cpu", false, 0, 0, 1, 0};
    thread_ = std::thread([this] { loop(); });
  }
  ~FakeService() override { drain(); }

  // Tokens every request generates (cycled); empty: the request's prompt.
  void set_script(std::vector<int32_t> script) {
    std::lock_guard<std::mutex> lock(mu_);
    script_ = std::move(script);
  }
  void set_step(std::chrono::milliseconds step) {
    std::lock_guard<std::mutex> lock(mu_);
    step_ = step;
  }
  // Every request fails with on_finish("error") after this many tokens (< 0: never).
  void fail_after(int tokens) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_after_ = tokens;
  }

  ModelInfo model_info() const override { return info_; }

  Result<uint64_t> submit(GenerateRequest request, std::shared_ptr<RequestObserver> observer) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return unavailable("the server is shutting down");
    if (!request.adapter.empty() && !adapters_.count(request.adapter))
      return not_found("adapter '" + request.adapter + "' is not loaded");
    if (static_cast<int64_t>(request.prompt.size()) + request.max_tokens > info_.max_model_len)
      return out_of_range("prompt + max_tokens over the model length");
    const uint64_t id = next_id_++;
    submitted_.push_back(request);
    if (!request.adapter.empty()) ++adapters_[request.adapter].requests;
    live_[id] = Live{std::move(request), std::move(observer), 0};
    peak_live_ = std::max(peak_live_, live_.size());
    cv_.notify_all();
    return id;
  }

  void cancel(uint64_t id) override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_.insert(id);
    auto it = live_.find(id);
    if (it == live_.end()) return;
    it->second.observer->on_finish("abort", "");
    live_.erase(it);
    if (live_.empty()) drained_cv_.notify_all();
    cv_.notify_all();
  }

  Status load_adapter(const std::string& name, const std::string& dir) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (adapters_.count(name)) return invalid_argument("adapter '" + name + "' is already loaded");
    adapters_[name] = AdapterInfo{name, dir, "cpu", false, 0, 0, 1, 0};
    loaded_dirs_.push_back(dir);
    return Status::ok();
  }
  Status unload_adapter(const std::string& name) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!adapters_.erase(name)) return not_found("adapter '" + name + "' is not loaded");
    return Status::ok();
  }
  std::vector<AdapterInfo> adapters() const override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<AdapterInfo> out;
    for (const auto& [name, a] : adapters_) out.push_back(a);
    return out;
  }
  ServiceStats stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    ServiceStats s;
    s.running = static_cast<int>(live_.size());
    s.kv_blocks_total = 64;
    s.kv_blocks_used = static_cast<int>(live_.size());
    s.generated_tokens = generated_;
    s.adapters = {};
    for (const auto& [name, a] : adapters_) s.adapters.push_back(a);
    return s;
  }
  void drain() override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      draining_ = true;
      cv_.notify_all();
      drained_cv_.wait(lock, [&] { return live_.empty(); });
      stop_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
  }

  // What tests look at.
  std::vector<GenerateRequest> submitted() const {
    std::lock_guard<std::mutex> lock(mu_);
    return submitted_;
  }
  std::set<uint64_t> cancelled() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_;
  }
  std::vector<std::string> loaded_dirs() const {
    std::lock_guard<std::mutex> lock(mu_);
    return loaded_dirs_;
  }
  size_t peak_live() const {
    std::lock_guard<std::mutex> lock(mu_);
    return peak_live_;
  }
  size_t live() const {
    std::lock_guard<std::mutex> lock(mu_);
    return live_.size();
  }
  // Waits until no request is live (or the timeout passes); true when none is.
  bool wait_idle(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return drained_cv_.wait_for(lock, timeout, [&] { return live_.empty(); });
  }

 private:
  struct Live {
    GenerateRequest request;
    std::shared_ptr<RequestObserver> observer;
    int generated = 0;
  };

  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, step_, [&] { return stop_; });
      for (auto it = live_.begin(); it != live_.end();) {
        Live& l = it->second;
        if (fail_after_ >= 0 && l.generated >= fail_after_) {
          l.observer->on_finish("error", "fake failure");
          it = live_.erase(it);
          continue;
        }
        const std::vector<int32_t>& script = script_.empty() ? l.request.prompt : script_;
        TokenOut t;
        t.id = script[static_cast<size_t>(l.generated) % script.size()];
        if (l.request.sampling.logprobs >= 0) {
          t.logprob = -0.5f;
          for (int k = 0; k < l.request.sampling.logprobs; ++k) t.top.emplace_back(t.id + k, -0.5f - k);
        }
        ++l.generated;
        ++generated_;
        l.observer->on_tokens({t});
        const bool stop = std::find(l.request.stop_ids.begin(), l.request.stop_ids.end(), t.id) != l.request.stop_ids.end();
        if (stop || l.generated >= l.request.max_tokens) {
          l.observer->on_finish(stop ? "stop" : "length", "");
          it = live_.erase(it);
        } else {
          ++it;
        }
      }
      if (live_.empty()) drained_cv_.notify_all();
    }
  }

  ModelInfo info_;
  mutable std::mutex mu_;
  std::condition_variable cv_, drained_cv_;
  std::chrono::milliseconds step_;
  std::vector<int32_t> script_;
  int fail_after_ = -1;
  std::map<std::string, AdapterInfo> adapters_;
  std::map<uint64_t, Live> live_;
  std::vector<GenerateRequest> submitted_;
  std::set<uint64_t> cancelled_;
  std::vector<std::string> loaded_dirs_;
  uint64_t next_id_ = 1;
  size_t peak_live_ = 0;
  int64_t generated_ = 0;
  bool draining_ = false, stop_ = false;
  std::thread thread_;
};

}  // namespace nb::serve::testing
