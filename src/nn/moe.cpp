#include "nn/moe.h"

namespace nb::nn {

// ---- ExpertLinear ----------------------------------------------------------------------------------

ExpertLinear::ExpertLinear(std::string expert_prefix, std::string name, int64_t experts, int64_t out, int64_t in,
                           FusedExpertSource fused)
    : prefix_(std::move(expert_prefix)),
      name_(std::move(name)),
      experts_(experts),
      out_(out),
      in_(in),
      fused_(std::move(fused)) {}

Status ExpertLinear::set_weight(std::unique_ptr<ops::PackedWeight> weight) {
  if (!weight) return internal_error(strformat("%s: no weight", description().c_str()));
  if (weight->experts != experts_ || weight->out != out_ || weight->in != in_)
    return format_error(strformat("%s: the weight stacks %lld experts of [%lld, %lld], the model expects %lld of [%lld, %lld]",
                                  description().c_str(), static_cast<long long>(weight->experts),
                                  static_cast<long long>(weight->out), static_cast<long long>(weight->in),
                                  static_cast<long long>(experts_), static_cast<long long>(out_),
                                  static_cast<long long>(in_)));
  weight_ = std::move(weight);
  return Status::ok();
}

void ExpertLinear::forward(ops::Backend& backend, TensorView out, TensorView x, const ops::ExpertRows& rows,
                           const ExpertLoraRows& lora) const {
  NB_CHECK(weight_ != nullptr, "%s: forward before set_weight", description().c_str());
  backend.expert_linear(out, x, *weight_, rows);
  if (lora.pair_slots && lora_.max_rank() > 0)
    lora_.apply(backend, out, lora.x_pairs, lora.pair_slots, lora.host_pair_slots, lora.scratch);
}

void ExpertLinear::set_lora(int slot, int64_t expert, const ops::LoraFactors& factors, DType dtype) {
  NB_CHECK(slot >= 0 && expert >= 0 && expert < experts_, "%s: slot %d expert %lld", description().c_str(), slot,
           static_cast<long long>(expert));
  lora_.set(static_cast<int>(slot * experts_ + expert), factors, dtype);
}

void ExpertLinear::clear_lora(int slot) {
  bool any = false;
  for (int64_t e = 0; e < experts_; ++e) {
    const int index = static_cast<int>(slot * experts_ + e);
    if (static_cast<size_t>(index) >= lora_.size()) break;
    lora_.set(index, ops::LoraFactors{}, DType::kF32, /*upload=*/false);
    any = true;
  }
  if (any) lora_.upload_all();
}

void ExpertLinear::reserve_lora_slots(int n, ops::Backend* backend) {
  if (backend) lora_backend_ = backend;
  lora_.reserve(static_cast<int>(n * experts_), lora_backend_);
}

// ---- MoeBlock ---------------------------------------------------------------------------------------

MoeBlock::MoeBlock(MoeSpec spec) : spec_(std::move(spec)) {
  const MoeSpec& s = spec_;
  const int64_t h = s.hidden, i = s.intermediate, e = s.num_experts;
  router_ = Linear(s.router, e, h);
  auto fused = [&](const char* param, int64_t offset, int64_t rows) {
    return s.fused_module.empty() ? FusedExpertSource{} : FusedExpertSource{s.fused_module + "." + param, offset, rows};
  };
  gate_ = ExpertLinear(s.expert_prefix, s.gate_name, e, i, h, fused("gate_up_proj", 0, 2 * i));
  up_ = ExpertLinear(s.expert_prefix, s.up_name, e, i, h, fused("gate_up_proj", i, 2 * i));
  down_ = ExpertLinear(s.expert_prefix, s.down_name, e, h, i, fused("down_proj", 0, h));
  if (s.shared_intermediate > 0) {
    shared_ = GatedMlp(s.shared_prefix + ".gate_proj", s.shared_prefix + ".up_proj", s.shared_prefix + ".down_proj", h,
                       s.shared_intermediate, false);
    if (s.shared_gate) shared_gate_ = Linear(s.shared_gate_module, 1, h);
  }
}

Status MoeBlock::load(WeightLoader& loader) {
  const bool alias = !spec_.router_alias.empty() && !loader.has_module(spec_.router) &&
                     loader.has_module(spec_.router_alias);
  NB_RETURN_IF_ERROR(loader.load_linear(router_, false, alias ? spec_.router_alias : ""));
  if (spec_.correction_bias) {
    const std::string name = spec_.router + ".e_score_correction_bias";
    NB_ASSIGN_OR_RETURN(ops::DeviceTensor stored, loader.load_dense(name, {spec_.num_experts}));
    correction_bias_ = ops::make_device_tensor(loader.backend(), DType::kF32, {spec_.num_experts});
    loader.backend().cast(correction_bias_.view(), stored.view());
    spec_.route.correction_bias = correction_bias_.buffer.as<float>();
  }
  for (ExpertLinear* e : expert_linears()) NB_RETURN_IF_ERROR(loader.load_experts(*e));
  if (has_shared()) {
    NB_RETURN_IF_ERROR(shared_.load(loader));
    if (spec_.shared_gate) NB_RETURN_IF_ERROR(loader.load_linear(shared_gate_, false));
  }
  return Status::ok();
}

std::vector<Linear*> MoeBlock::linears() {
  std::vector<Linear*> out{&router_};
  if (has_shared()) {
    for (Linear* l : shared_.linears()) out.push_back(l);
    if (spec_.shared_gate) out.push_back(&shared_gate_);
  }
  return out;
}

void MoeBlock::forward(const BatchContext& ctx, TensorView out, TensorView x, const MoeScratch& s) const {
  ops::Backend& b = *ctx.backend;
  const int64_t t = ctx.num_tokens, k = spec_.top_k, p = t * k;
  const int e = spec_.num_experts;
  // Routing, in F32 (design.md): logits, top-k ids and weights, pairs grouped by expert.
  TensorView logits = rows_view(s.logits, t), weights = rows_view(s.weights, t), ids = rows_view(s.ids, t);
  router_.forward(ctx, logits, x);
  b.moe_route(weights, ids, logits, spec_.route);
  const bool lora = ctx.row_slot && (gate_.has_lora() || up_.has_lora() || down_.has_lora());
  int32_t* pair_slots = lora ? s.pair_slots.as<int32_t>() : nullptr;
  b.moe_dispatch(s.sorted.as<int32_t>(), s.offsets.as<int32_t>(), pair_slots, ids.as<int32_t>(), ctx.row_slot, t,
                 static_cast<int>(k), e);
  ops::ExpertRows rows;
  rows.pairs = p;
  rows.top_k = static_cast<int>(k);
  rows.num_experts = e;
  rows.sorted_pairs = s.sorted.as<int32_t>();
  rows.expert_offsets = s.offsets.as<int32_t>();
  // Adapters: each pair's shrink reads its token's row (gathered once for gate and up).
  ExpertLoraRows lr;
  if (lora) {
    lr.pair_slots = pair_slots;
    lr.host_pair_slots = b.device() == Device::kCpu ? pair_slots : nullptr;
    lr.scratch = ctx.lora_scratch;
    if (gate_.has_lora() || up_.has_lora()) {
      lr.x_pairs = rows_view(s.x_pairs, p);
      b.embedding(lr.x_pairs, x, s.pair_tokens.as<int32_t>(), p);
    }
  }
  TensorView gate = rows_view(s.gate, p), up = rows_view(s.up, p), down = rows_view(s.down, p);
  rows.x_by_token = true;
  gate_.forward(b, gate, x, rows, lr);
  up_.forward(b, up, x, rows, lr);
  b.silu_mul(gate, gate, up);  // [P, I]
  rows.x_by_token = false;
  lr.x_pairs = gate;
  down_.forward(b, down, gate, rows, lr);  // [P, H]
  if (!has_shared()) {
    b.moe_combine(out, down, weights, nullptr, nullptr);
    return;
  }
  TensorView shared = rows_view(s.shared_out, t);
  shared_.forward(ctx, shared, x, s.shared);
  if (!spec_.shared_gate) {
    b.moe_combine(out, down, weights, &shared, nullptr);
    return;
  }
  TensorView g = rows_view(s.shared_gate, t);
  shared_gate_.forward(ctx, g, x);
  b.moe_combine(out, down, weights, &shared, &g);
}

}  // namespace nb::nn
