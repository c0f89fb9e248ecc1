#include "models/decoder.h"

#include <algorithm>
#include <set>

#include "core/log.h"

namespace nb::models {

Decoder::Decoder(ModelConfig config, DecoderSpec spec) : config_(std::move(config)), spec_(std::move(spec)) {
  const int64_t h = spec_.hidden;
  for (int l = 0; l < spec_.num_layers; ++l) {
    std::string p = strformat("model.layers.%d", l);
    Layer layer;
    layer.input_norm = nn::RmsNorm(p + ".input_layernorm", h, spec_.rms_eps);
    layer.post_norm = nn::RmsNorm(p + ".post_attention_layernorm", h, spec_.rms_eps);
    if (spec_.mla) {
      layer.mla = nn::MlaAttention(p + ".self_attn", spec_.mla_spec);
    } else {
      layer.attention = nn::Attention(p + ".self_attn", spec_.attention);
    }
    std::optional<nn::MoeSpec> moe = spec_.moe_block ? spec_.moe_block(l) : std::nullopt;
    if (moe) {
      layer.moe = std::make_unique<nn::MoeBlock>(std::move(*moe));
      max_top_k_ = std::max(max_top_k_, layer.moe->spec().top_k);
    } else {
      layer.mlp = nn::GatedMlp(p + ".mlp.gate_proj", p + ".mlp.up_proj", p + ".mlp.down_proj", h, spec_.intermediate,
                               spec_.mlp_bias);
    }
    layers_.push_back(std::move(layer));
  }
  for (const Layer& layer : layers_)
    if (layer.moe) moe_shape_ = &layer.moe->spec();
  final_norm_ = nn::RmsNorm("model.norm", h, spec_.rms_eps);
  lm_head_ = nn::Linear("lm_head", spec_.vocab, h);
}

Status Decoder::load(nn::WeightLoader& loader, bool verbose) {
  backend_ = &loader.backend();
  NB_ASSIGN_OR_RETURN(embed_, loader.load_dense("model.embed_tokens.weight", {spec_.vocab, spec_.hidden}));
  Progress progress("loading layers", spec_.num_layers);
  for (int l = 0; l < spec_.num_layers; ++l) {
    Layer& layer = layers_[static_cast<size_t>(l)];
    NB_RETURN_IF_ERROR(layer.input_norm.load(loader));
    NB_RETURN_IF_ERROR(layer.post_norm.load(loader));
    NB_RETURN_IF_ERROR(spec_.mla ? layer.mla.load(loader) : layer.attention.load(loader));
    NB_RETURN_IF_ERROR(layer.moe ? layer.moe->load(loader) : layer.mlp.load(loader));
    if (verbose) progress.update(l + 1);
  }
  if (verbose) progress.finish();
  NB_RETURN_IF_ERROR(final_norm_.load(loader));
  bool tied = spec_.tie_embeddings || !loader.has_module("lm_head");
  if (tied && !spec_.tie_embeddings)
    NB_LOG_WARN("lm_head is absent although tie_word_embeddings is false: using the embedding table");
  NB_RETURN_IF_ERROR(loader.load_linear(lm_head_, false, tied ? "model.embed_tokens" : ""));
  NB_ASSIGN_OR_RETURN(nn::RopeFrequencies freq, nn::compute_rope(spec_.rope));
  inv_freq_ = ops::upload_tensor(*backend_, TensorView{freq.inv_freq.data(), DType::kF32,
                                                        {static_cast<int64_t>(freq.inv_freq.size())}, {}, Device::kCpu});
  rope_.inv_freq = inv_freq_.buffer.as<float>();
  rope_.rotary_dim = spec_.rope.rotary_dim;
  rope_.attention_factor = freq.attention_factor;
  rope_.neox = spec_.rope.neox;
  for (nn::Linear* lin : linears())
    for (size_t s = 0; s < lin->slices().size(); ++s) sites_[lin->slices()[s].module] = {lin, s};
  for (nn::ExpertLinear* x : expert_linears())
    for (int64_t e = 0; e < x->experts(); ++e) expert_sites_[x->expert_module(e)] = {x, e};
  for (Layer& layer : layers_)
    if (layer.moe && !layer.moe->spec().router_alias.empty()) sites_[layer.moe->spec().router_alias] = {&layer.moe->router(), 0};
  return Status::ok();
}

KvSpec Decoder::kv_spec() const {
  if (spec_.mla) return KvSpec{spec_.num_layers, 1, static_cast<int>(spec_.mla_spec.latent_dim()), 0, true};
  return KvSpec{spec_.num_layers, spec_.attention.num_kv_heads, spec_.attention.head_dim, spec_.attention.head_dim};
}

std::vector<nn::Linear*> Decoder::linears() {
  std::vector<nn::Linear*> out;
  for (Layer& layer : layers_) {
    for (nn::Linear* l : spec_.mla ? layer.mla.linears() : layer.attention.linears()) out.push_back(l);
    for (nn::Linear* l : layer.moe ? layer.moe->linears() : layer.mlp.linears()) out.push_back(l);
  }
  out.push_back(&lm_head_);
  return out;
}

std::vector<nn::ExpertLinear*> Decoder::expert_linears() {
  std::vector<nn::ExpertLinear*> out;
  for (Layer& layer : layers_)
    if (layer.moe)
      for (nn::ExpertLinear* x : layer.moe->expert_linears()) out.push_back(x);
  return out;
}

std::vector<LayerInfo> Decoder::layer_info() const {
  std::vector<LayerInfo> out;
  for (const Layer& layer : layers_) {
    LayerInfo info;
    if (spec_.mla) {
      const nn::MlaSpec& m = spec_.mla_spec;
      info.attention = strformat("MLA %d heads, q_lora_rank %lld, kv_lora_rank %lld, qk %lld+%lld (rope), v %lld",
                                 m.num_heads, static_cast<long long>(m.q_lora_rank), static_cast<long long>(m.kv_lora_rank),
                                 static_cast<long long>(m.qk_nope_head_dim), static_cast<long long>(m.qk_rope_head_dim),
                                 static_cast<long long>(m.v_head_dim));
    } else {
      const nn::AttentionSpec& a = spec_.attention;
      info.attention = strformat("GQA %d/%d heads x %d", a.num_heads, a.num_kv_heads, a.head_dim);
    }
    if (layer.moe) {
      const nn::MoeSpec& m = layer.moe->spec();
      const std::string groups =
          m.route.num_groups > 1 ? strformat(", %d groups keep %d", m.route.num_groups, m.route.topk_groups) : "";
      info.mlp = strformat("MoE %d experts x %lld, top %d (%s%s)", m.num_experts, static_cast<long long>(m.intermediate),
                           m.top_k, m.route.scoring == ops::MoeScoring::kSigmoid ? "sigmoid" : "softmax", groups.c_str());
      if (m.shared_intermediate > 0)
        info.mlp += strformat(" + shared expert %lld%s", static_cast<long long>(m.shared_intermediate),
                              m.shared_gate ? " (sigmoid gate)" : "");
    } else {
      info.mlp = strformat("dense MLP %lld", static_cast<long long>(spec_.intermediate));
    }
    out.push_back(std::move(info));
  }
  return out;
}

std::vector<BaseModule> Decoder::lora_modules() const {
  std::vector<BaseModule> mods;
  BaseModule embed;
  embed.name = "model.embed_tokens";
  embed.kind = BaseModule::Kind::kEmbedding;
  embed.in = spec_.vocab;
  embed.out = spec_.hidden;
  mods.push_back(embed);
  auto self = const_cast<Decoder*>(this);
  for (nn::Linear* lin : self->linears()) {
    for (const nn::LoraSlice& s : lin->slices()) {
      BaseModule m;
      m.name = s.module;
      m.out = s.size;
      m.in = lin->in_features();
      // "model.layers.<l>." -> l
      if (s.module.rfind("model.layers.", 0) == 0) m.layer = std::atoi(s.module.c_str() + 13);
      mods.push_back(m);
    }
  }
  // MoE experts: each expert's Linear (adapters written with transformers 4 name them), and the fused
  // 3-D parameters of transformers 5 that PEFT's target_parameters address.
  for (const Layer& layer : layers_) {
    if (!layer.moe) continue;
    const nn::MoeSpec& ms = layer.moe->spec();
    const int layer_index = static_cast<int>(&layer - layers_.data());
    if (!ms.router_alias.empty())
      mods.push_back(BaseModule::make(ms.router_alias, BaseModule::Kind::kLinear, ms.num_experts, ms.hidden, layer_index));
    for (nn::ExpertLinear* x : layer.moe->expert_linears()) {
      for (int64_t e = 0; e < x->experts(); ++e) {
        BaseModule m;
        m.name = x->expert_module(e);
        m.out = x->out_features();
        m.in = x->in_features();
        m.layer = layer_index;
        mods.push_back(m);
      }
    }
    if (ms.fused_module.empty()) continue;
    auto param = [&](const char* name, int index, std::vector<ExpertSlice> slices, int64_t in) {
      BaseModule m;
      m.kind = BaseModule::Kind::kExpertParam;
      m.name = ms.fused_module + "." + name;
      m.in = in;
      for (const ExpertSlice& sl : slices) m.out += sl.rows;
      m.layer = layer_index;
      m.num_experts = ms.num_experts;
      m.experts_module = ms.fused_module;
      m.param_index = index;
      m.expert_prefix = ms.expert_prefix;
      m.slices = std::move(slices);
      mods.push_back(std::move(m));
    };
    param("gate_up_proj", 0, {{ms.gate_name, ms.intermediate}, {ms.up_name, ms.intermediate}}, ms.hidden);
    param("down_proj", 1, {{ms.down_name, ms.hidden}}, ms.intermediate);
  }
  return mods;
}

int Decoder::max_lora_rank() const {
  int r = 0;
  for (nn::Linear* l : const_cast<Decoder*>(this)->linears()) r = std::max(r, l->max_lora_rank());
  for (nn::ExpertLinear* x : const_cast<Decoder*>(this)->expert_linears()) r = std::max(r, x->max_lora_rank());
  for (const SlotState& s : slots_) r = std::max(r, s.embed_lora.rank);
  return r;
}

void Decoder::reserve_lora_slots(int n, ops::Backend* backend) {
  for (nn::Linear* l : linears()) l->reserve_lora_slots(n, backend);
  for (nn::ExpertLinear* x : expert_linears()) x->reserve_lora_slots(n, backend);
}

// ---- adapters ------------------------------------------------------------------------------------------

Status Decoder::install_adapter(int slot, const LoraAdapter& adapter) {
  if (slot < 0) return internal_error("negative adapter slot");
  if (slots_.size() <= static_cast<size_t>(slot)) slots_.resize(static_cast<size_t>(slot) + 1);
  // Check everything first so a failure changes nothing.
  for (const auto& [name, m] : adapter.modules) {
    if (m.kind == BaseModule::Kind::kEmbedding ? name != "model.embed_tokens"
                                               : !sites_.count(name) && !expert_sites_.count(name))
      return format_error(strformat("module '%s' has no LoRA site in this model", name.c_str()));
  }
  for (const auto& [name, t] : adapter.modules_to_save) {
    if (name != "lm_head" && name != "model.embed_tokens")
      return unsupported(strformat("modules_to_save '%s' (supported: lm_head, model.embed_tokens)", name.c_str()));
  }
  remove_adapter(slot);
  reserve_lora_slots(static_cast<int>(slots_.size()), backend_);
  SlotState& st = slots_[static_cast<size_t>(slot)];
  ops::Backend& b = *backend_;
  for (const auto& [name, m] : adapter.modules) {
    Result<ops::DeviceBuffer> da = ops::try_upload_buffer(b, m.a.data(), m.a.nbytes());
    Result<ops::DeviceBuffer> db = da.is_ok() ? ops::try_upload_buffer(b, m.b.data(), m.b.nbytes()) : da.status();
    if (!db.is_ok()) {  // out of device memory: leave the slot empty, the engine keeps running
      remove_adapter(slot);
      return db.status().with_context(strformat("adapter factors of '%s'", name.c_str()));
    }
    st.buffers.push_back(std::move(da).value());
    const void* a = st.buffers.back().data();
    st.buffers.push_back(std::move(db).value());
    ops::LoraFactors f{a, st.buffers.back().data(), m.rank, m.scaling};
    if (m.kind == BaseModule::Kind::kEmbedding) {
      st.embed_lora = f;
      st.embed_lora_dtype = m.a.dtype();
    } else if (auto it = sites_.find(name); it != sites_.end()) {
      it->second.first->set_lora(slot, it->second.second, f, m.a.dtype());
    } else {
      auto [experts, e] = expert_sites_.at(name);
      experts->set_lora(slot, e, f, m.a.dtype());
    }
  }
  for (const auto& [name, t] : adapter.modules_to_save) {
    if (name == "lm_head") {
      NB_ASSIGN_OR_RETURN(st.lm_head_replacement, b.pack_dense(t.view()));
    } else {
      st.embed_replacement = ops::upload_tensor(b, t.view());
    }
  }
  st.used = true;
  return Status::ok();
}

void Decoder::remove_adapter(int slot) {
  if (slot < 0 || static_cast<size_t>(slot) >= slots_.size()) return;
  for (nn::Linear* l : linears()) l->clear_lora(slot);
  for (nn::ExpertLinear* x : expert_linears()) x->clear_lora(slot);
  slots_[static_cast<size_t>(slot)] = SlotState{};
}

// ---- forward ---------------------------------------------------------------------------------------------

void Decoder::ensure_workspace(int64_t tokens, int64_t rows) {
  if (tokens <= ws_.tokens && rows <= ws_.rows) return;
  tokens = std::max(tokens, ws_.tokens);
  rows = std::max(rows, ws_.rows);
  ws_ = Workspace{};
  ++ws_epoch_;
  ws_.tokens = tokens;
  ws_.rows = rows;
  DType dt = backend_->activation_dtype();
  const auto& a = spec_.attention;
  auto make = [&](DType t, Shape shape) {
    ws_.buffers.emplace_back(*backend_, dtype_bytes(t, static_cast<size_t>(shape_numel(shape))));
    return ws_.buffers.back().view(t, std::move(shape));
  };
  ws_.h = make(dt, {tokens, spec_.hidden});
  ws_.x = make(dt, {tokens, spec_.hidden});
  ws_.tmp = make(dt, {tokens, spec_.hidden});
  if (spec_.mla) {
    const nn::MlaSpec& m = spec_.mla_spec;
    if (m.q_lora_rank > 0) ws_.mla.q_a = make(dt, {tokens, m.q_lora_rank});
    ws_.mla.q = make(dt, {tokens, m.num_heads * m.qk_head_dim()});
    ws_.mla.latent = make(dt, {tokens, m.latent_dim()});
    ws_.mla.attn = make(dt, {tokens, m.num_heads * m.v_head_dim});
  } else {
    ws_.q = make(dt, {tokens, int64_t{a.num_heads} * a.head_dim});
    ws_.k = make(dt, {tokens, int64_t{a.num_kv_heads} * a.head_dim});
    ws_.v = make(dt, {tokens, int64_t{a.num_kv_heads} * a.head_dim});
    ws_.attn = make(dt, {tokens, int64_t{a.num_heads} * a.head_dim});
  }
  ws_.gate = make(dt, {tokens, spec_.intermediate});
  ws_.up = make(dt, {tokens, spec_.intermediate});
  if (moe_shape_) {  // every MoE layer has the same sizes
    const nn::MoeSpec& m = *moe_shape_;
    const int64_t p = tokens * m.top_k;
    nn::MoeScratch& ms = ws_.moe;
    ms.logits = make(DType::kF32, {tokens, m.num_experts});
    ms.weights = make(DType::kF32, {tokens, m.top_k});
    ms.ids = make(DType::kI32, {tokens, m.top_k});
    ms.sorted = make(DType::kI32, {p});
    ms.offsets = make(DType::kI32, {int64_t{m.num_experts} + 1});
    ms.pair_slots = make(DType::kI32, {p});
    ms.pair_tokens = make(DType::kI32, {p});
    std::vector<int32_t> pair_tokens(static_cast<size_t>(p));
    for (int64_t i = 0; i < p; ++i) pair_tokens[static_cast<size_t>(i)] = static_cast<int32_t>(i / m.top_k);
    backend_->upload(ms.pair_tokens.data, pair_tokens.data(), pair_tokens.size() * sizeof(int32_t));
    ms.x_pairs = make(dt, {p, spec_.hidden});
    ms.gate = make(dt, {p, m.intermediate});
    ms.up = make(dt, {p, m.intermediate});
    ms.down = make(dt, {p, spec_.hidden});
    if (m.shared_intermediate > 0) {
      ms.shared.gate = make(dt, {tokens, m.shared_intermediate});
      ms.shared.up = make(dt, {tokens, m.shared_intermediate});
      ms.shared_out = make(dt, {tokens, spec_.hidden});
      ms.shared_gate = make(dt, {tokens, 1});
    }
  }
  ws_.g = make(dt, {rows, spec_.hidden});
  ws_.logits = make(dt, {rows, spec_.vocab});
  ws_.logits_alt = make(dt, {rows, spec_.vocab});
  ws_.logits_f32 = make(DType::kF32, {rows, spec_.vocab});
  ws_.mask = make(dt, {tokens, 1});
  ws_.inv_mask = make(dt, {tokens, 1});
}

// dst[r] = alt[r] for the rows whose slot is `slot` (multiplying by 0/1 masks keeps it in ops).
void Decoder::apply_row_masked(const nn::BatchContext& ctx, TensorView dst, TensorView alt, int slot, int64_t rows,
                                    const int32_t* host_row_slot) {
  std::vector<float> mask(static_cast<size_t>(rows)), inv(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    mask[static_cast<size_t>(r)] = host_row_slot[r] == slot ? 1.f : 0.f;
    inv[static_cast<size_t>(r)] = 1.f - mask[static_cast<size_t>(r)];
  }
  TensorView m = nn::rows_view(ws_.mask, rows), im = nn::rows_view(ws_.inv_mask, rows);
  TensorView mf{mask.data(), DType::kF32, {rows, 1}, {}, Device::kCpu}, imf{inv.data(), DType::kF32, {rows, 1}, {}, Device::kCpu};
  ops::DeviceTensor md = ops::upload_tensor(*backend_, mf), imd = ops::upload_tensor(*backend_, imf);
  ctx.backend->cast(m, md.view());
  ctx.backend->cast(im, imd.view());
  ctx.backend->mul(dst, dst, im);
  ctx.backend->mul(alt, alt, m);
  ctx.backend->add(dst, dst, alt);
}

void Decoder::embed(const nn::BatchContext& ctx) {
  const int64_t t = ctx.num_tokens;
  TensorView h = nn::rows_view(ws_.h, t);
  ctx.backend->embedding(h, embed_.view(), ctx.token_ids, t);
  if (!ctx.row_slot) return;
  std::set<int> present(ctx.host_row_slot, ctx.host_row_slot + t);
  for (int slot : present) {
    if (slot < 0 || static_cast<size_t>(slot) >= slots_.size()) continue;
    const SlotState& st = slots_[static_cast<size_t>(slot)];
    if (!st.embed_replacement.empty()) {  // modules_to_save: these rows use another table
      TensorView alt = nn::rows_view(ws_.tmp, t);
      ctx.backend->embedding(alt, st.embed_replacement.view(), ctx.token_ids, t);
      apply_row_masked(ctx, h, alt, slot, t, ctx.host_row_slot);
    }
    if (st.embed_lora.rank > 0) {  // y += scaling * A^T[ids] @ B^T for this slot's rows
      TensorView tmp = ctx.lora_scratch;
      tmp.shape = {t, st.embed_lora.rank};
      tmp.strides = {st.embed_lora.rank, 1};
      TensorView table{const_cast<void*>(st.embed_lora.a), st.embed_lora_dtype, {spec_.vocab, st.embed_lora.rank}, {}, h.device};
      ctx.backend->embedding(tmp, table, ctx.token_ids, t);
      ops::LoraArgs args;
      args.row_slot = ctx.row_slot;
      args.host_row_slot = ctx.host_row_slot;
      args.slots.resize(slots_.size());
      args.slots[static_cast<size_t>(slot)] = st.embed_lora;
      args.dtype = st.embed_lora_dtype;
      args.max_rank = st.embed_lora.rank;
      ctx.backend->lora_expand(h, tmp, args);
    }
  }
}

Status Decoder::forward(const nn::BatchContext& ctx, const KvViews& kv, const std::vector<int32_t>& logit_rows,
                             float* logits) {
  ops::Backend& b = *ctx.backend;
  nn::BatchContext c = ctx;
  ops::DeviceBuffer rows = ops::upload_buffer(b, logit_rows.data(), logit_rows.size() * sizeof(int32_t));
  c.num_logit_rows = static_cast<int64_t>(logit_rows.size());
  c.logit_rows = rows.as<int32_t>();
  std::vector<int32_t> host_slots;
  ops::DeviceBuffer slots;
  if (ctx.row_slot) {
    for (int32_t row : logit_rows) host_slots.push_back(ctx.host_row_slot[row]);
    slots = ops::upload_buffer(b, host_slots.data(), host_slots.size() * sizeof(int32_t));
    c.logit_row_slot = slots.as<int32_t>();
    c.host_logit_row_slot = host_slots.data();
  }
  NB_ASSIGN_OR_RETURN(TensorView f32, forward_device(c, kv));
  b.download(logits, f32.data, f32.nbytes());
  return Status::ok();
}

Result<TensorView> Decoder::forward_device(const nn::BatchContext& ctx, const KvViews& kv) {
  const int64_t t = ctx.num_tokens;
  if (ctx.num_logit_rows <= 0 || !ctx.logit_rows || (ctx.row_slot && !ctx.logit_row_slot))
    return invalid_argument("forward_device: the batch names no logit rows (or no slots for them)");
  ensure_workspace(t, ctx.num_logit_rows);
  embed(ctx);
  TensorView h = nn::rows_view(ws_.h, t), x = nn::rows_view(ws_.x, t), tmp = nn::rows_view(ws_.tmp, t);
  nn::AttentionScratch as{ws_.q, ws_.k, ws_.v, ws_.attn};
  nn::MlpScratch ms{ws_.gate, ws_.up};
  if (spec_.mla) mla_context_.prepare(ctx, *backend_, spec_.mla_spec);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    layer.input_norm.forward(ctx, x, h);
    if (spec_.mla) {
      layer.mla.forward(ctx, rope_, tmp, x, kv.k[l], ws_.mla, mla_context_);
    } else {
      layer.attention.forward(ctx, rope_, tmp, x, kv.k[l], kv.v[l], as);
    }
    ctx.backend->add(h, h, tmp);
    layer.post_norm.forward(ctx, x, h);
    if (layer.moe) {
      layer.moe->forward(ctx, tmp, x, ws_.moe);
    } else {
      layer.mlp.forward(ctx, tmp, x, ms);
    }
    ctx.backend->add(h, h, tmp);
  }
  return compute_logits(ctx);
}

bool Decoder::graph_safe(const int32_t* host_row_slot, int64_t rows) const {
  bool any_adapter = false;
  for (int64_t r = 0; r < rows; ++r) {
    const int slot = host_row_slot[r];
    if (slot < 0 || static_cast<size_t>(slot) >= slots_.size()) continue;
    any_adapter = true;
    const SlotState& st = slots_[static_cast<size_t>(slot)];
    // Embedding LoRA and modules_to_save replacements are planned on the host per step.
    if (st.embed_lora.rank > 0 || !st.embed_replacement.empty() || st.lm_head_replacement) return false;
  }
  if (!any_adapter) return true;
  // Beyond this many rows the backends plan LoRA launches on the host (ops.h); below it every
  // Linear must read its slot table from device memory.
  if (rows > ops::kLoraDecodeMaxRows) return false;
  for (nn::Linear* l : const_cast<Decoder*>(this)->linears())
    if (!l->lora_device_driven()) return false;
  // Expert LoRA runs per (token, expert) pair: more rows than the decode path takes.
  for (nn::ExpertLinear* x : const_cast<Decoder*>(this)->expert_linears())
    if (x->has_lora() && (rows * max_top_k_ > ops::kLoraDecodeMaxRows || !x->lora_device_driven())) return false;
  return true;
}

TensorView Decoder::compute_logits(const nn::BatchContext& ctx) {
  const int64_t r = ctx.num_logit_rows;
  ops::Backend& b = *ctx.backend;
  // Gather the wanted rows of the residual stream (the embedding op is a row gather).
  TensorView g = nn::rows_view(ws_.g, r);
  b.embedding(g, nn::rows_view(ws_.h, ctx.num_tokens), ctx.logit_rows, r);
  final_norm_.forward(ctx, g, g);
  // The lm_head sees a batch of r rows, each with its own adapter slot.
  nn::BatchContext sub = ctx;
  sub.num_tokens = r;
  if (ctx.row_slot) {
    sub.row_slot = ctx.logit_row_slot;
    sub.host_row_slot = ctx.host_logit_row_slot;
  }
  TensorView out = nn::rows_view(ws_.logits, r);
  lm_head_.forward(sub, out, g);
  if (ctx.row_slot) {
    std::set<int> present(ctx.host_logit_row_slot, ctx.host_logit_row_slot + r);
    for (int slot : present) {
      if (slot < 0 || static_cast<size_t>(slot) >= slots_.size() || !slots_[static_cast<size_t>(slot)].lm_head_replacement) continue;
      TensorView alt = nn::rows_view(ws_.logits_alt, r);
      b.linear(alt, g, *slots_[static_cast<size_t>(slot)].lm_head_replacement, nullptr);
      apply_row_masked(sub, out, alt, slot, r, ctx.host_logit_row_slot);
    }
  }
  TensorView f32 = nn::rows_view(ws_.logits_f32, r);
  b.cast(f32, out);
  return f32;
}

}  // namespace nb::models
