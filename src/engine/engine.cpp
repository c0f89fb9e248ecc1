#include "engine/engine.h"

#include <algorithm>
#include <chrono>

#include "core/log.h"
#include "engine/backend_factory.h"

namespace nb::engine {

namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Engine::~Engine() = default;

Result<std::unique_ptr<Engine>> Engine::create(const EngineOptions& options) {
  std::unique_ptr<Engine> e(new Engine());
  e->options_ = options;
  NB_ASSIGN_OR_RETURN(e->backend_, create_backend(options.device, options.reference_kernels));
  NB_ASSIGN_OR_RETURN(e->host_ops_, create_backend("cpu", false));
  models::LoadOptions load;
  load.verbose = options.verbose;
  if (options.dummy_config) {
    NB_ASSIGN_OR_RETURN(e->model_, models::make_dummy_model(*options.dummy_config, options.dummy_weights, *e->backend_,
                                                            &e->linear_bytes_));
  } else {
    NB_ASSIGN_OR_RETURN(e->model_, models::load_model(options.model_dir, *e->backend_, load));
  }
  const ModelConfig& cfg = e->model_->config();
  if (e->options_.max_model_len <= 0)
    e->options_.max_model_len = static_cast<int>(std::min<int64_t>(cfg.max_position_embeddings, 4096));
  int64_t kv_tokens = options.max_kv_tokens > 0 ? options.max_kv_tokens : int64_t{e->options_.max_model_len} * 8;
  NB_RETURN_IF_ERROR(e->allocate_kv(kv_tokens));
  e->slot_adapters_.resize(static_cast<size_t>(std::max(1, options.max_loras)));
  return e;
}

Status Engine::allocate_kv(int64_t tokens) {
  models::KvSpec spec = model_->kv_spec();
  int bs = options_.kv_block_size;
  int blocks = static_cast<int>((tokens + bs - 1) / bs);
  blocks_ = std::make_unique<BlockManager>(blocks, bs);
  DType dt = backend_->activation_dtype();
  for (int l = 0; l < spec.num_layers; ++l) {
    k_cache_.push_back(ops::make_device_tensor(*backend_, dt, {int64_t{blocks} * bs, spec.num_kv_heads, spec.head_dim}));
    v_cache_.push_back(ops::make_device_tensor(*backend_, dt, {int64_t{blocks} * bs, spec.num_kv_heads, spec.v_head_dim}));
  }
  return Status::ok();
}

// ---- adapters -----------------------------------------------------------------------------------

Status Engine::load_adapter(const std::string& name, const std::string& dir) {
  if (name.empty()) return invalid_argument("adapter name must not be empty");
  if (adapter_slots_.count(name)) return invalid_argument(strformat("adapter '%s' is already loaded", name.c_str()));
  auto free_it = std::find(slot_adapters_.begin(), slot_adapters_.end(), nullptr);
  if (free_it == slot_adapters_.end())
    return out_of_range(strformat("cannot load adapter '%s': all %zu adapter slots are in use (--max-loras)",
                                  name.c_str(), slot_adapters_.size()));
  int slot = static_cast<int>(free_it - slot_adapters_.begin());
  NB_ASSIGN_OR_RETURN(LoraAdapter adapter, ::nb::load_adapter(name, dir, model_->lora_modules(), backend_->activation_dtype()));
  NB_RETURN_IF_ERROR(model_->install_adapter(slot, adapter).with_context(strformat("adapter '%s'", name.c_str())));
  *free_it = std::make_unique<LoraAdapter>(std::move(adapter));
  adapter_slots_[name] = slot;
  return Status::ok();
}

Status Engine::unload_adapter(const std::string& name) {
  auto it = adapter_slots_.find(name);
  if (it == adapter_slots_.end()) return not_found(strformat("adapter '%s' is not loaded", name.c_str()));
  model_->remove_adapter(it->second);
  slot_adapters_[static_cast<size_t>(it->second)].reset();
  adapter_slots_.erase(it);
  return Status::ok();
}

std::vector<std::string> Engine::adapters() const {
  std::vector<std::string> names;
  for (const auto& [name, slot] : adapter_slots_) names.push_back(name);
  return names;
}

Result<int> Engine::slot_of(const std::string& adapter) const {
  if (adapter.empty()) return -1;
  auto it = adapter_slots_.find(adapter);
  if (it == adapter_slots_.end()) {
    std::string loaded;
    for (const auto& [n, s] : adapter_slots_) loaded += (loaded.empty() ? "" : ", ") + n;
    return not_found(strformat("adapter '%s' is not loaded (loaded: %s)", adapter.c_str(),
                               loaded.empty() ? "none" : loaded.c_str()));
  }
  return it->second;
}

// ---- one forward step ---------------------------------------------------------------------------

Result<std::vector<std::vector<float>>> Engine::step(const std::vector<StepInput>& inputs) {
  const ModelConfig& cfg = model_->config();
  BatchHost h;
  for (const StepInput& in : inputs) {
    if (in.tokens.empty()) return invalid_argument("a sequence in the batch has no tokens");
    NB_ASSIGN_OR_RETURN(int slot, slot_of(in.adapter));
    int64_t start = seq_len_[in.seq];
    int64_t total = start + static_cast<int64_t>(in.tokens.size());
    if (total > options_.max_model_len)
      return out_of_range(strformat("sequence of %lld tokens exceeds the maximum model length %d",
                                    static_cast<long long>(total), options_.max_model_len));
    NB_RETURN_IF_ERROR(blocks_->reserve(in.seq, total));
    h.query_start.push_back(static_cast<int32_t>(h.ids.size()));
    for (size_t j = 0; j < in.tokens.size(); ++j) {
      int32_t id = in.tokens[j];
      if (id < 0 || id >= cfg.vocab_size)
        return out_of_range(strformat("token id %d is outside the vocabulary [0, %lld)", id,
                                      static_cast<long long>(cfg.vocab_size)));
      int64_t pos = start + static_cast<int64_t>(j);
      h.ids.push_back(id);
      h.positions.push_back(static_cast<int32_t>(pos));
      h.slots.push_back(blocks_->slot(in.seq, pos));
      h.row_slot.push_back(slot);
      if (in.all_logits || j + 1 == in.tokens.size()) h.logit_rows.push_back(static_cast<int32_t>(h.ids.size() - 1));
    }
    h.context_lens.push_back(static_cast<int32_t>(total));
    h.max_query = std::max<int>(h.max_query, static_cast<int>(in.tokens.size()));
    h.max_context = std::max<int>(h.max_context, static_cast<int>(total));
  }
  h.query_start.push_back(static_cast<int32_t>(h.ids.size()));
  int max_blocks = 0;
  for (const StepInput& in : inputs) max_blocks = std::max<int>(max_blocks, static_cast<int>(blocks_->block_table(in.seq).size()));
  h.block_tables.assign(inputs.size() * static_cast<size_t>(max_blocks), 0);
  for (size_t s = 0; s < inputs.size(); ++s) {
    const auto& table = blocks_->block_table(inputs[s].seq);
    std::copy(table.begin(), table.end(), h.block_tables.begin() + static_cast<ptrdiff_t>(s * max_blocks));
  }
  h.max_blocks = max_blocks;

  std::vector<float> logits(h.logit_rows.size() * static_cast<size_t>(cfg.vocab_size));
  NB_RETURN_IF_ERROR(run_forward(h, logits.data()));
  for (const StepInput& in : inputs) seq_len_[in.seq] += static_cast<int64_t>(in.tokens.size());

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

Status Engine::run_forward(const BatchHost& h, float* logits) {
  ops::Backend& b = *backend_;
  auto up = [&](const std::vector<int32_t>& v) { return ops::upload_buffer(b, v.data(), v.size() * sizeof(int32_t)); };
  ops::DeviceBuffer ids = up(h.ids), pos = up(h.positions), slots = up(h.slots), qs = up(h.query_start),
                    ctx_lens = up(h.context_lens), tables = up(h.block_tables), row_slot = up(h.row_slot);
  nn::BatchContext ctx;
  ctx.backend = &b;
  ctx.num_tokens = static_cast<int64_t>(h.ids.size());
  ctx.token_ids = ids.as<int32_t>();
  ctx.host_token_ids = h.ids.data();
  ctx.positions = pos.as<int32_t>();
  ctx.slot_mapping = slots.as<int32_t>();
  ctx.attention.num_seqs = static_cast<int>(h.context_lens.size());
  ctx.attention.query_start = qs.as<int32_t>();
  ctx.attention.context_lens = ctx_lens.as<int32_t>();
  ctx.attention.block_tables = tables.as<int32_t>();
  ctx.attention.max_blocks_per_seq = h.max_blocks;
  ctx.attention.block_size = blocks_->block_size();
  ctx.attention.max_query_len = h.max_query;
  ctx.attention.max_context_len = h.max_context;
  bool any_adapter = std::any_of(h.row_slot.begin(), h.row_slot.end(), [](int32_t s) { return s >= 0; });
  ops::DeviceBuffer scratch;
  if (any_adapter) {
    int max_rank = model_->max_lora_rank();
    scratch = ops::DeviceBuffer(b, static_cast<size_t>(ctx.num_tokens) * static_cast<size_t>(std::max(1, max_rank)) * sizeof(float));
    ctx.row_slot = row_slot.as<int32_t>();
    ctx.host_row_slot = h.row_slot.data();
    ctx.lora_scratch = scratch.view(DType::kF32, {ctx.num_tokens, std::max(1, max_rank)});
  }
  models::KvViews kv;
  for (size_t l = 0; l < k_cache_.size(); ++l) {
    kv.k.push_back(k_cache_[l].view());
    kv.v.push_back(v_cache_[l].view());
  }
  return model_->forward(ctx, kv, h.logit_rows, logits);
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
  for (size_t begin = 0; begin < ids.size() && st.is_ok(); begin += static_cast<size_t>(options_.max_batch_tokens)) {
    size_t end = std::min(ids.size(), begin + static_cast<size_t>(options_.max_batch_tokens));
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
  const int64_t vocab = model_->config().vocab_size;
  std::vector<GenerationResult> results(requests.size());
  std::vector<int64_t> seqs(requests.size());
  std::vector<int32_t> last(requests.size());
  std::vector<bool> done(requests.size(), false);
  for (const auto& r : requests) {
    if (r.prompt.empty()) return invalid_argument("a request has an empty prompt");
    NB_RETURN_IF_ERROR(slot_of(r.adapter).status());
  }
  auto sample = [&](size_t i, std::vector<float>& row, int64_t step_index) {
    int32_t id = 0;
    TensorView lv{row.data(), DType::kF32, {1, vocab}, {}, Device::kCpu};
    host_ops_->sample(&id, lv, {requests[i].sampling}, static_cast<uint64_t>(step_index));
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
    for (size_t b = 0; b < p.size(); b += static_cast<size_t>(options_.max_batch_tokens)) {
      size_t e = std::min(p.size(), b + static_cast<size_t>(options_.max_batch_tokens));
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
    sample(i, last_logits, 0);
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
    auto r = step(batch);
    if (!r.is_ok()) {
      cleanup();
      return r.status();
    }
    for (size_t k = 0; k < who.size(); ++k) sample(who[k], r->at(k), step_index);
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
