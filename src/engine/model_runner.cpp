#include "engine/model_runner.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>

#include "core/log.h"
#include "core/sysmem.h"
#include "engine/backend_factory.h"

namespace nb::engine {

namespace {
constexpr double kGiB = 1073741824.0;

// Device bytes the weights will take, estimated before loading: the checkpoint files' sizes (packed
// INT4 stays packed; dense weights become 16-bit, never larger), or for dummy models the shapes.
uint64_t estimate_weight_bytes(const EngineOptions& o, const RandomWeights* random) {
  if (random) {
    const ModelConfig& c = random->config;
    const int64_t hd = c.head_dim > 0 ? c.head_dim : c.hidden_size / std::max<int64_t>(1, c.num_attention_heads);
    const int64_t kv = c.num_key_value_heads > 0 ? c.num_key_value_heads : c.num_attention_heads;
    const double per_layer = static_cast<double>(c.hidden_size) * static_cast<double>((c.num_attention_heads + 2 * kv) * hd) +
                             static_cast<double>(c.num_attention_heads * hd) * static_cast<double>(c.hidden_size) +
                             3.0 * static_cast<double>(c.hidden_size) * static_cast<double>(c.intermediate_size);
    const int bits = random->weights.bits;
    const double group = random->weights.group_size > 0 ? static_cast<double>(random->weights.group_size)
                                                       : static_cast<double>(c.hidden_size);
    const double per_weight = bits > 0 ? bits / 8.0 + 2.0 / group : 2.0;
    const double embed = static_cast<double>(c.vocab_size * c.hidden_size) * 2.0 * (c.tie_word_embeddings ? 1 : 2);
    return static_cast<uint64_t>(per_layer * static_cast<double>(c.num_hidden_layers) * per_weight + embed);
  }
  uint64_t total = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(o.model_dir, ec))
    if (entry.path().extension() == ".safetensors") total += entry.file_size(ec);
  return total;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

ModelRunner::~ModelRunner() = default;

Result<std::unique_ptr<ModelRunner>> ModelRunner::create(const EngineOptions& options, const RandomWeights* random) {
  std::unique_ptr<ModelRunner> e(new ModelRunner());
  e->options_ = options;
  AdapterRegistryOptions lora;
  lora.max_loras = std::max(1, options.max_loras);
  lora.max_cpu_loras = options.max_cpu_loras;
  NB_RETURN_IF_ERROR(lora.validate());
  const double t_start = now_seconds();
  NB_ASSIGN_OR_RETURN(e->backend_, create_backend(options.device, options.reference_kernels));
  // Enough device memory for the weights? Checked before loading anything.
  size_t free0 = 0, total_mem = 0;
  const bool has_memory = e->backend_->device_memory(&free0, &total_mem);
  if (has_memory) {
    const uint64_t need = estimate_weight_bytes(options, random);
    if (need > free0)
      return out_of_range(strformat("not enough GPU memory for the model: its weights need about %.1f GiB, the device "
                                    "has %.1f GiB free of %.1f GiB", need / kGiB, free0 / kGiB, total_mem / kGiB));
  } else if (std::optional<uint64_t> avail = available_host_memory()) {
    // Host backends copy the weights into their own layout: about the checkpoint's size.
    const uint64_t need = estimate_weight_bytes(options, random);
    if (need > *avail)
      return out_of_range(strformat("not enough memory for the model: its weights need about %.1f GiB, %.1f GiB are "
                                    "available", need / kGiB, *avail / kGiB));
  }
  models::LoadOptions load;
  load.verbose = options.verbose;
  if (random) {
    NB_ASSIGN_OR_RETURN(e->model_, models::make_dummy_model(random->config, random->weights, *e->backend_,
                                                            &e->linear_bytes_, &e->startup_.convert_seconds,
                                                            &e->startup_.generate_seconds));
  } else {
    NB_ASSIGN_OR_RETURN(e->model_, models::load_model(options.model_dir, *e->backend_, load));
  }
  const ModelConfig& cfg = e->model_->config();
  if (e->options_.max_model_len <= 0)
    e->options_.max_model_len = static_cast<int>(std::min<int64_t>(cfg.max_position_embeddings, 4096));
  int64_t kv_tokens = options.max_kv_tokens > 0 ? options.max_kv_tokens : int64_t{e->options_.max_model_len} * 8;
  const models::KvSpec kvs = e->model_->kv_spec();
  const uint64_t kv_token_bytes =
      static_cast<uint64_t>(kvs.elements_per_token()) * dtype_bytes(e->backend_->activation_dtype(), 1);
  if (has_memory) {
    size_t free1 = 0;
    e->backend_->device_memory(&free1, &total_mem);
    e->startup_.weight_device_bytes = free0 > free1 ? free0 - free1 : 0;
    if (options.gpu_memory_fraction > 0) {
      if (options.gpu_memory_fraction > 1)
        return invalid_argument(strformat("--gpu-memory-fraction must be in (0, 1], got %g", options.gpu_memory_fraction));
      // Reserve for activations of the largest batch, workspaces and graphs.
      const double reserve = 1.0 * kGiB;
      const double budget = options.gpu_memory_fraction * static_cast<double>(total_mem) -
                            static_cast<double>(total_mem - free1) - reserve;
      const int64_t fit = budget > 0 ? static_cast<int64_t>(budget / static_cast<double>(kv_token_bytes)) : 0;
      if (fit < e->options_.max_model_len)
        return out_of_range(strformat("not enough GPU memory for the KV cache: %.2f GiB of %.1f GiB may be used "
                                      "(--gpu-memory-fraction %.2f), the weights take %.1f GiB and one sequence of "
                                      "%d tokens needs %.2f GiB", options.gpu_memory_fraction * total_mem / kGiB,
                                      total_mem / kGiB, options.gpu_memory_fraction, (total_mem - free1) / kGiB,
                                      e->options_.max_model_len, e->options_.max_model_len * kv_token_bytes / kGiB));
      kv_tokens = fit;
    }
  }
  if (kv_tokens < 1 || kv_tokens > (int64_t{1} << 34))
    return out_of_range(strformat("KV cache of %lld tokens: expected 1 to 2^34 tokens", static_cast<long long>(kv_tokens)));
  if (!has_memory) {  // plan host memory before taking it
    const uint64_t need = static_cast<uint64_t>(kv_tokens) * kv_token_bytes;
    if (std::optional<uint64_t> avail = available_host_memory(); avail && need > *avail)
      return out_of_range(strformat("not enough memory for the KV cache: %lld tokens x %llu bytes need %.2f GiB, %.2f GiB "
                                    "are available (lower --max-model-len, or the KV cache size)",
                                    static_cast<long long>(kv_tokens), static_cast<unsigned long long>(kv_token_bytes),
                                    need / kGiB, *avail / kGiB));
  }
  NB_RETURN_IF_ERROR(e->allocate_kv(kv_tokens));
  e->startup_.kv_tokens = kv_tokens;
  e->startup_.kv_bytes = static_cast<uint64_t>(kv_tokens) * kv_token_bytes;
  if (options.verbose)
    NB_LOG_INFO("KV cache: %lld tokens x %llu bytes/token (%d layers x %s) = %.1f MiB", static_cast<long long>(kv_tokens),
                static_cast<unsigned long long>(kv_token_bytes), kvs.num_layers,
                kvs.latent ? strformat("%d latent + rope key", kvs.head_dim).c_str()
                           : strformat("%d KV heads x (%d + %d)", kvs.num_kv_heads, kvs.head_dim, kvs.v_head_dim).c_str(),
                static_cast<double>(e->startup_.kv_bytes) / (1024.0 * 1024.0));
  lora.dtype = e->backend_->activation_dtype();
  e->registry_ = std::make_unique<AdapterRegistry>(e->model_->lora_modules(), lora);
  // Every slot reserved up front: the device slot tables never move (CUDA graphs capture them).
  e->model_->reserve_lora_slots(lora.max_loras, e->backend_.get());
  e->backend_->synchronize();
  e->startup_.create_seconds = now_seconds() - t_start;
  return e;
}

Status ModelRunner::allocate_kv(int64_t tokens) {
  models::KvSpec spec = model_->kv_spec();
  int bs = options_.kv_block_size;
  int blocks = static_cast<int>((tokens + bs - 1) / bs);
  num_blocks_ = blocks;
  DType dt = backend_->activation_dtype();
  for (int l = 0; l < spec.num_layers; ++l) {
    NB_ASSIGN_OR_RETURN(ops::DeviceTensor k, ops::try_make_device_tensor(*backend_, dt, {int64_t{blocks} * bs, spec.num_kv_heads, spec.head_dim}));
    NB_ASSIGN_OR_RETURN(ops::DeviceTensor v, ops::try_make_device_tensor(*backend_, dt, {int64_t{blocks} * bs, spec.num_kv_heads, spec.v_head_dim}));
    k_cache_.push_back(std::move(k));
    v_cache_.push_back(std::move(v));
  }
  return Status::ok();
}

// ---- adapters -----------------------------------------------------------------------------------

Status ModelRunner::load_adapter(const std::string& name, const std::string& dir) {
  if (name.empty()) return invalid_argument("adapter name must not be empty");
  NB_RETURN_IF_ERROR(registry_->load(name, dir));
  // A free slot takes it at once: the first batch that uses it starts without an upload, and an
  // adapter the model cannot install fails here (acquire_adapter_slots then unregisters it).
  int in_slots = 0;
  for (const std::string& n : registry_->list()) in_slots += registry_->slot_of(n) >= 0;
  if (in_slots < registry_->max_loras()) NB_RETURN_IF_ERROR(acquire_adapter_slots({name}).status());
  return Status::ok();
}

Status ModelRunner::unload_adapter(const std::string& name) {
  const int slot = registry_->slot_of(name);
  NB_RETURN_IF_ERROR(registry_->remove(name));
  if (slot >= 0) model_->remove_adapter(slot);
  return Status::ok();
}

std::vector<std::string> ModelRunner::adapters() const { return registry_->list(); }

Result<int> ModelRunner::slot_of(const std::string& adapter) const {
  if (adapter.empty()) return -1;
  if (!registry_->contains(adapter)) return registry_->unknown_adapter(adapter);
  return registry_->slot_of(adapter);
}

Result<AdapterSlots> ModelRunner::acquire_adapter_slots(const std::vector<std::string>& names) {
  std::vector<std::string> distinct;
  for (const std::string& n : names) {
    if (n.empty() || std::find(distinct.begin(), distinct.end(), n) != distinct.end()) continue;
    if (!registry_->contains(n)) return registry_->unknown_adapter(n);
    distinct.push_back(n);
  }
  if (distinct.size() > static_cast<size_t>(registry_->max_loras()))
    return out_of_range(strformat("this batch uses %zu distinct adapters but there are only %d adapter slots "
                                  "(--max-loras %d)", distinct.size(), registry_->max_loras(), registry_->max_loras()));
  AdapterSlots held;
  held.slots_.assign(names.size(), -1);
  if (distinct.empty()) return held;
  NB_ASSIGN_OR_RETURN(std::vector<SlotGrant> grants, registry_->acquire_slots(distinct));
  held.registry_ = registry_.get();
  held.held_ = distinct;
  for (const SlotGrant& g : grants) held.held_slots_.push_back(g.slot);
  // Install what is not in its slot yet. A failure (the adapter does not fit this model) leaves the
  // slot empty and unregisters that adapter, so the registry never believes in factors that are not there.
  Status failed;
  std::vector<std::string> unfit;
  for (size_t i = 0; i < grants.size(); ++i) {
    if (!grants[i].needs_upload) continue;
    ++epoch_;  // new factors may raise a slice's max rank: recorded steps with LoRA are stale
    Status s = model_->install_adapter(grants[i].slot, *grants[i].adapter);
    if (s.is_ok()) continue;
    model_->remove_adapter(grants[i].slot);
    unfit.push_back(distinct[i]);
    if (failed.is_ok()) failed = s.with_context(strformat("adapter '%s' (unloaded)", distinct[i].c_str()));
  }
  if (!unfit.empty()) {
    held.release();
    for (const std::string& n : unfit) (void)registry_->remove(n);
    return failed;
  }
  for (size_t i = 0; i < names.size(); ++i) held.slots_[i] = held.slot_of(names[i]);
  return held;
}

AdapterSlots& AdapterSlots::operator=(AdapterSlots&& o) noexcept {
  if (this != &o) {
    release();
    registry_ = o.registry_;
    held_ = std::move(o.held_);
    held_slots_ = std::move(o.held_slots_);
    slots_ = std::move(o.slots_);
    o.registry_ = nullptr;
    o.held_.clear();
  }
  return *this;
}

int AdapterSlots::slot_of(const std::string& name) const {
  for (size_t i = 0; i < held_.size(); ++i)
    if (held_[i] == name) return held_slots_[i];
  return -1;
}

void AdapterSlots::release() {
  if (registry_ && !held_.empty()) registry_->release_slots(held_);
  registry_ = nullptr;
  held_.clear();
  held_slots_.clear();
}

// ---- one forward step ---------------------------------------------------------------------------

Status ModelRunner::add_rows(BatchHost& h, const std::vector<int32_t>& tokens, int64_t start,
                        const std::vector<int32_t>& block_table, int slot, bool all_logits, bool last_logit) const {
  const ModelConfig& cfg = model_->config();
  if (tokens.empty()) return invalid_argument("a sequence in the batch has no tokens");
  const int64_t total = start + static_cast<int64_t>(tokens.size());
  if (total > options_.max_model_len)
    return out_of_range(strformat("sequence of %lld tokens exceeds the maximum model length %d",
                                  static_cast<long long>(total), options_.max_model_len));
  const int bs = options_.kv_block_size;
  if (static_cast<int64_t>(block_table.size()) * bs < total)
    return internal_error(strformat("a block table of %zu blocks cannot hold %lld tokens", block_table.size(),
                                    static_cast<long long>(total)));
  h.query_start.push_back(static_cast<int32_t>(h.ids.size()));
  for (size_t j = 0; j < tokens.size(); ++j) {
    const int32_t id = tokens[j];
    if (id < 0 || id >= cfg.vocab_size)
      return out_of_range(strformat("token id %d is outside the vocabulary [0, %lld)", id,
                                    static_cast<long long>(cfg.vocab_size)));
    const int64_t pos = start + static_cast<int64_t>(j);
    h.ids.push_back(id);
    h.positions.push_back(static_cast<int32_t>(pos));
    h.slots.push_back(block_table[static_cast<size_t>(pos / bs)] * bs + static_cast<int32_t>(pos % bs));
    h.row_slot.push_back(slot);
    if (all_logits || (last_logit && j + 1 == tokens.size()))
      h.logit_rows.push_back(static_cast<int32_t>(h.ids.size() - 1));
  }
  h.context_lens.push_back(static_cast<int32_t>(total));
  h.max_query = std::max<int>(h.max_query, static_cast<int>(tokens.size()));
  h.max_context = std::max<int>(h.max_context, static_cast<int>(total));
  h.max_blocks = std::max<int>(h.max_blocks, static_cast<int>(block_table.size()));
  return Status::ok();
}

Result<TensorView> ModelRunner::run_rows(const std::vector<RowInput>& inputs) {
  if (inputs.empty()) return invalid_argument("run_rows: an empty batch");
  BatchHost h;
  std::vector<std::string> adapter_names;
  for (const RowInput& in : inputs) adapter_names.push_back(in.adapter);
  NB_ASSIGN_OR_RETURN(AdapterSlots held, acquire_adapter_slots(adapter_names));  // released when the step returns
  std::vector<const std::vector<int32_t>*> tables;
  for (const RowInput& in : inputs) {
    NB_CHECK(in.tokens && in.block_table, "run_rows: a row without tokens or block table");
    NB_RETURN_IF_ERROR(add_rows(h, *in.tokens, in.start, *in.block_table, held.slot_of(in.adapter), in.all_logits, in.logits));
    tables.push_back(in.block_table);
  }
  if (h.logit_rows.empty()) {
    // The model always produces logits for some rows: take the last one (the caller ignores it).
    h.logit_rows.push_back(static_cast<int32_t>(h.ids.size() - 1));
  }
  // Close the description: query starts, block tables padded to the longest.
  h.query_start.push_back(static_cast<int32_t>(h.ids.size()));
  h.block_tables.assign(tables.size() * static_cast<size_t>(h.max_blocks), 0);
  for (size_t s = 0; s < tables.size(); ++s)
    std::copy(tables[s]->begin(), tables[s]->end(), h.block_tables.begin() + static_cast<ptrdiff_t>(s * h.max_blocks));
  return run_forward(h);
}

Status ModelRunner::register_adapter(const std::string& name, const std::string& dir, int max_rank) {
  if (name.empty()) return invalid_argument("adapter name must not be empty");
  NB_RETURN_IF_ERROR(registry_->load(name, dir));
  if (max_rank <= 0) return Status::ok();
  auto adapter = registry_->get(name);
  const int rank = adapter.is_ok() ? (*adapter)->max_rank() : 0;
  if (rank <= max_rank) return Status::ok();
  (void)registry_->remove(name);
  return invalid_argument(strformat("adapter '%s' (%s) has rank %d, more than --max-lora-rank %d", name.c_str(),
                                    dir.c_str(), rank, max_rank));
}

// One step's batch description goes to the device as one copy into a persistent buffer (no
// allocation per step); the layout for T rows, S sequences and R logit rows is
//   ids[T] positions[T] slots[T] row_slot[T] query_start[S+1] context_lens[S] logit_rows[R]
//   logit_row_slot[R] block_tables[S * max_blocks]
// Decode steps (one token per sequence) use max_blocks = the blocks of max_model_len and pass
// max_model_len as the context hint, so that every decode step of T rows issues the same launches:
// on backends with graphs the first such step runs eagerly and is recorded, later ones replay.
Result<TensorView> ModelRunner::run_forward(const BatchHost& h) {
  ops::Backend& b = *backend_;
  const int64_t t = static_cast<int64_t>(h.ids.size()), nseq = static_cast<int64_t>(h.context_lens.size()),
                r = static_cast<int64_t>(h.logit_rows.size());
  const bool decode = h.max_query == 1;
  const int bs = options_.kv_block_size;
  const int mb = decode ? std::max(h.max_blocks, (options_.max_model_len + bs - 1) / bs) : h.max_blocks;
  const bool any_adapter = std::any_of(h.row_slot.begin(), h.row_slot.end(), [](int32_t s) { return s >= 0; });
  // Stage.
  const int64_t o_ids = 0, o_pos = t, o_slots = 2 * t, o_rs = 3 * t, o_qs = 4 * t, o_ctx = o_qs + nseq + 1,
                o_lr = o_ctx + nseq, o_lrs = o_lr + r, o_tab = o_lrs + r, total = o_tab + nseq * mb;
  stage_.assign(static_cast<size_t>(total), 0);
  auto put = [&](int64_t off, const std::vector<int32_t>& v) { std::copy(v.begin(), v.end(), stage_.begin() + off); };
  put(o_ids, h.ids);
  put(o_pos, h.positions);
  put(o_slots, h.slots);
  put(o_rs, h.row_slot);
  put(o_qs, h.query_start);
  put(o_ctx, h.context_lens);
  put(o_lr, h.logit_rows);
  for (int64_t i = 0; i < r; ++i) stage_[static_cast<size_t>(o_lrs + i)] = h.row_slot[static_cast<size_t>(h.logit_rows[static_cast<size_t>(i)])];
  for (int64_t s = 0; s < nseq; ++s)
    std::copy(h.block_tables.begin() + s * h.max_blocks, h.block_tables.begin() + (s + 1) * h.max_blocks,
              stage_.begin() + o_tab + s * mb);
  const size_t bytes = static_cast<size_t>(total) * sizeof(int32_t);
  if (step_buf_.bytes() < bytes) {
    NB_ASSIGN_OR_RETURN(step_buf_, ops::DeviceBuffer::create(b, std::max(bytes, size_t{64} << 10)));
    ++epoch_;
  }
  b.upload_async(step_buf_.data(), stage_.data(), bytes);
  const int32_t* d = step_buf_.as<int32_t>();
  nn::BatchContext ctx;
  ctx.backend = &b;
  ctx.num_tokens = t;
  ctx.token_ids = d + o_ids;
  ctx.host_token_ids = h.ids.data();
  ctx.positions = d + o_pos;
  ctx.slot_mapping = d + o_slots;
  ctx.attention.num_seqs = static_cast<int>(nseq);
  ctx.attention.query_start = d + o_qs;
  ctx.attention.context_lens = d + o_ctx;
  ctx.attention.block_tables = d + o_tab;
  ctx.attention.max_blocks_per_seq = mb;
  ctx.attention.block_size = bs;
  ctx.attention.max_query_len = h.max_query;
  ctx.attention.max_context_len = decode ? std::max(h.max_context, options_.max_model_len) : h.max_context;
  ctx.num_logit_rows = r;
  ctx.logit_rows = d + o_lr;
  if (any_adapter) {
    const int64_t max_rank = std::max(1, model_->max_lora_rank());
    const int64_t lora_rows = model_->lora_rows(t);  // MoE: one row per (token, expert) pair
    const size_t need = static_cast<size_t>(lora_rows * max_rank) * sizeof(float);
    if (lora_buf_.bytes() < need) {
      lora_buf_.reset();
      NB_ASSIGN_OR_RETURN(lora_buf_, ops::DeviceBuffer::create(b, need));
      ++epoch_;
    }
    ctx.row_slot = d + o_rs;
    ctx.host_row_slot = h.row_slot.data();
    ctx.logit_row_slot = d + o_lrs;
    ctx.host_logit_row_slot = stage_.data() + o_lrs;
    ctx.lora_scratch = lora_buf_.view(DType::kF32, {lora_rows, max_rank});
  }
  models::KvViews kv;
  for (size_t l = 0; l < k_cache_.size(); ++l) {
    kv.k.push_back(k_cache_[l].view());
    kv.v.push_back(v_cache_[l].view());
  }
  const bool recordable = decode && options_.cuda_graphs && b.supports_graphs() &&
                          model_->graph_safe(h.row_slot.data(), t);
  if (!recordable) return model_->forward_device(ctx, kv);
  // Recordings stay valid while no buffer they use moved.
  const std::array<uint64_t, 3> epoch = {b.memory_epoch(), model_->workspace_epoch(), epoch_};
  if (epoch != graph_epoch_) {
    graphs_.clear();
    graph_epoch_ = epoch;
  }
  const std::pair<int64_t, bool> key{t, any_adapter};
  auto it = graphs_.find(key);
  if (it != graphs_.end()) {
    it->second.graph->launch();
    return it->second.logits;
  }
  NB_ASSIGN_OR_RETURN(TensorView logits, model_->forward_device(ctx, kv));
  // Record only once this shape ran without growing anything (the recording then reuses it all).
  if (std::array<uint64_t, 3>{b.memory_epoch(), model_->workspace_epoch(), epoch_} == epoch) {
    b.begin_capture();
    auto recorded = model_->forward_device(ctx, kv);
    std::unique_ptr<ops::Graph> graph = b.end_capture();
    if (graph && recorded.is_ok() && recorded->data == logits.data) graphs_[key] = RecordedStep{std::move(graph), logits};
  }
  return logits;
}

}  // namespace nb::engine
