#include "engine/engine.h"

#include <algorithm>
#include <chrono>

#include "engine/backend_factory.h"

namespace nb::engine {

namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Engine::~Engine() = default;

Result<std::unique_ptr<Engine>> Engine::wrap(std::unique_ptr<ModelRunner> runner) {
  std::unique_ptr<Engine> e(new Engine());
  e->runner_ = std::move(runner);
  NB_ASSIGN_OR_RETURN(e->host_ops_, create_backend("cpu", false));
  e->blocks_ = std::make_unique<BlockManager>(e->runner_->kv_blocks(), e->runner_->kv_block_size());
  return e;
}

Result<std::unique_ptr<Engine>> Engine::create(const EngineOptions& options) {
  NB_ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner, ModelRunner::create(options));
  return wrap(std::move(runner));
}

Result<std::unique_ptr<Engine>> Engine::create_random(const EngineOptions& options, const RandomWeights& random) {
  NB_ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner, ModelRunner::create(options, &random));
  return wrap(std::move(runner));
}

// ---- one forward step ---------------------------------------------------------------------------

Result<std::vector<std::vector<float>>> Engine::step(const std::vector<StepInput>& inputs) {
  const ModelConfig& cfg = runner_->config();
  NB_ASSIGN_OR_RETURN(TensorView dev, step_device(inputs));
  std::vector<float> logits(static_cast<size_t>(dev.numel()));
  runner_->backend().download(logits.data(), dev.data, dev.nbytes());
  // Split the logits back per input.
  std::vector<std::vector<float>> out;
  size_t row = 0;
  for (const StepInput& in : inputs) {
    size_t rows = in.all_logits ? in.tokens.size() : 1;
    auto begin = logits.begin() + static_cast<ptrdiff_t>(row * static_cast<size_t>(cfg.vocab_size));
    out.emplace_back(begin, begin + static_cast<ptrdiff_t>(rows * static_cast<size_t>(cfg.vocab_size)));
    row += rows;
  }
  return out;
}

Result<TensorView> Engine::step_device(const std::vector<StepInput>& inputs) {
  // Blocks this call reserves go back if the step fails, whatever failed (nothing leaks).
  std::vector<std::pair<int64_t, int>> before;
  for (const StepInput& in : inputs)
    before.emplace_back(in.seq, blocks_->has(in.seq) ? static_cast<int>(blocks_->block_table(in.seq).size()) : 0);
  auto rollback = [&] {
    for (const auto& [seq, n] : before) blocks_->truncate(seq, n);
  };
  std::vector<ModelRunner::RowInput> rows;
  for (const StepInput& in : inputs) {
    const int64_t start = seq_len_.count(in.seq) ? seq_len_[in.seq] : 0;
    const int64_t total = start + static_cast<int64_t>(in.tokens.size());
    if (total > runner_->max_model_len()) {
      rollback();
      return out_of_range(strformat("sequence of %lld tokens exceeds the maximum model length %d",
                                    static_cast<long long>(total), runner_->max_model_len()));
    }
    if (Status s = blocks_->reserve(in.seq, total); !s.is_ok()) {
      rollback();
      return s;
    }
    rows.push_back(ModelRunner::RowInput{&in.tokens, start, &blocks_->block_table(in.seq), in.adapter, true, in.all_logits});
  }
  Result<TensorView> logits = runner_->run_rows(rows);
  if (!logits.is_ok()) {
    rollback();
    return logits.status();
  }
  for (const StepInput& in : inputs) seq_len_[in.seq] += static_cast<int64_t>(in.tokens.size());
  return logits;
}

void Engine::release_sequence(int64_t seq) {
  blocks_->release(seq);
  seq_len_.erase(seq);
}

// ---- generation -------------------------------------------------------------------------------------

Result<std::vector<float>> Engine::logits(const std::vector<int32_t>& ids, const std::string& adapter,
                                          bool all_positions) {
  if (ids.empty()) return invalid_argument("no token ids given");
  int64_t seq = next_seq_id_++;
  std::vector<float> out;
  Status st;
  for (size_t begin = 0; begin < ids.size() && st.is_ok(); begin += static_cast<size_t>(runner_->options().max_batch_tokens)) {
    size_t end = std::min(ids.size(), begin + static_cast<size_t>(runner_->options().max_batch_tokens));
    StepInput in{seq, std::vector<int32_t>(ids.begin() + static_cast<ptrdiff_t>(begin), ids.begin() + static_cast<ptrdiff_t>(end)),
                 adapter, all_positions};
    auto r = step({in});
    if (!r.is_ok()) {
      st = r.status();
      break;
    }
    if (all_positions || end == ids.size()) out.insert(out.end(), r->at(0).begin(), r->at(0).end());
  }
  release_sequence(seq);
  if (!st.is_ok()) return st;
  return out;
}

Result<std::vector<GenerationResult>> Engine::generate(const std::vector<GenerationRequest>& requests,
                                                       const TokenCallback& on_token, GenerationStats* stats) {
  const int64_t vocab = runner_->config().vocab_size;
  std::vector<GenerationResult> results(requests.size());
  std::vector<int64_t> seqs(requests.size());
  std::vector<int32_t> last(requests.size());
  std::vector<bool> done(requests.size(), false);
  std::vector<std::string> distinct;
  for (const auto& r : requests) {
    if (r.prompt.empty()) return invalid_argument("a request has an empty prompt");
    NB_RETURN_IF_ERROR(runner_->slot_of(r.adapter).status());
    if (!r.adapter.empty() && std::find(distinct.begin(), distinct.end(), r.adapter) == distinct.end())
      distinct.push_back(r.adapter);
  }
  // All rows decode as one batch: refuse up front (not after the prefill) when it cannot fit.
  if (distinct.size() > static_cast<size_t>(runner_->adapter_registry().max_loras()))
    return out_of_range(strformat("these requests use %zu distinct adapters but there are only %d adapter slots "
                                  "(--max-loras %d)", distinct.size(), runner_->adapter_registry().max_loras(), runner_->adapter_registry().max_loras()));
  auto accept = [&](size_t i, int32_t id) {
    results[i].tokens.push_back(id);
    last[i] = id;
    if (on_token) on_token(i, id);
    const auto& stop = requests[i].stop_ids;
    if (std::find(stop.begin(), stop.end(), id) != stop.end()) {
      done[i] = true;
      results[i].finish_reason = "stop";
    } else if (static_cast<int>(results[i].tokens.size()) >= requests[i].max_tokens) {
      done[i] = true;
      results[i].finish_reason = "length";
    }
  };
  auto cleanup = [&] {
    for (int64_t s : seqs) release_sequence(s);
  };
  double t0 = now_seconds();
  // Prefill: one request at a time, long prompts in chunks of max_batch_tokens.
  for (size_t i = 0; i < requests.size(); ++i) {
    seqs[i] = next_seq_id_++;
    const auto& p = requests[i].prompt;
    std::vector<float> last_logits;
    for (size_t b = 0; b < p.size(); b += static_cast<size_t>(runner_->options().max_batch_tokens)) {
      size_t e = std::min(p.size(), b + static_cast<size_t>(runner_->options().max_batch_tokens));
      auto r = step({StepInput{seqs[i], std::vector<int32_t>(p.begin() + static_cast<ptrdiff_t>(b), p.begin() + static_cast<ptrdiff_t>(e)),
                               requests[i].adapter, false}});
      if (!r.is_ok()) {
        cleanup();
        return r.status();
      }
      last_logits = std::move(r->at(0));
    }
    if (requests[i].max_tokens <= 0) {
      done[i] = true;
      results[i].finish_reason = "length";
      continue;
    }
    int32_t id = 0;
    TensorView lv{last_logits.data(), DType::kF32, {1, vocab}, {}, Device::kCpu};
    host_ops_->sample(&id, lv, {requests[i].sampling}, 0);
    accept(i, id);
  }
  double t1 = now_seconds();
  // Decode: every unfinished request advances by one token per step, all in one batch.
  for (int64_t step_index = 1;; ++step_index) {
    std::vector<StepInput> batch;
    std::vector<size_t> who;
    for (size_t i = 0; i < requests.size(); ++i) {
      if (done[i]) continue;
      batch.push_back(StepInput{seqs[i], {last[i]}, requests[i].adapter, false});
      who.push_back(i);
    }
    if (batch.empty()) break;
    // The logits stay on the device: the backend picks the tokens (greedy rows never leave it).
    auto r = step_device(batch);
    if (!r.is_ok()) {
      cleanup();
      return r.status();
    }
    std::vector<ops::SamplingParams> params;
    for (size_t k : who) params.push_back(requests[k].sampling);
    std::vector<int32_t> ids(who.size());
    runner_->backend().sample(ids.data(), *r, params, static_cast<uint64_t>(step_index));
    for (size_t k = 0; k < who.size(); ++k) accept(who[k], ids[k]);
  }
  double t2 = now_seconds();
  cleanup();
  if (stats) {
    stats->prefill_seconds = t1 - t0;
    stats->decode_seconds = t2 - t1;
    for (size_t i = 0; i < requests.size(); ++i) {
      stats->prompt_tokens += static_cast<int64_t>(requests[i].prompt.size());
      stats->generated_tokens += static_cast<int64_t>(results[i].tokens.size());
    }
  }
  return results;
}

}  // namespace nb::engine
