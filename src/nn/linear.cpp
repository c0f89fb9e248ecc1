#include "nn/linear.h"

#include <algorithm>

namespace nb::nn {

Linear::Linear(std::string name, int64_t out, int64_t in)
    : Linear(name, in, std::vector<LoraSlice>{LoraSlice{name, 0, out}}) {}

Linear::Linear(std::string name, int64_t in, std::vector<LoraSlice> slices)
    : name_(std::move(name)), in_(in), slices_(std::move(slices)) {
  for (const auto& s : slices_) {
    NB_CHECK(s.offset == out_, "slice %s starts at %lld, expected %lld", s.module.c_str(),
             static_cast<long long>(s.offset), static_cast<long long>(out_));
    out_ += s.size;
  }
  lora_.resize(slices_.size());
  lora_tables_.resize(slices_.size());
}

Status Linear::set_weight(std::unique_ptr<ops::PackedWeight> weight, ops::DeviceBuffer bias, DType bias_dtype) {
  if (!weight) return internal_error(strformat("%s: no weight", name_.c_str()));
  if (weight->out != out_ || weight->in != in_)
    return format_error(strformat("%s: weight has logical shape [%lld, %lld], the model expects [%lld, %lld]",
                                  name_.c_str(), static_cast<long long>(weight->out),
                                  static_cast<long long>(weight->in), static_cast<long long>(out_),
                                  static_cast<long long>(in_)));
  weight_ = std::move(weight);
  bias_ = std::move(bias);
  bias_dtype_ = bias_dtype;
  return Status::ok();
}

TensorView column_slice(TensorView t, int64_t col, int64_t cols) {
  NB_CHECK(t.rank() == 2, "column_slice of a rank-%d tensor", t.rank());
  int64_t ld = t.strides.empty() ? t.shape[1] : t.strides[0];
  TensorView v = t;
  v.data = static_cast<uint8_t*>(t.data) + dtype_bytes(t.dtype, static_cast<size_t>(col));
  v.shape = {t.shape[0], cols};
  v.strides = {ld, 1};
  return v;
}

void Linear::forward(const BatchContext& ctx, TensorView out, TensorView x) const {
  NB_CHECK(weight_ != nullptr, "%s: forward before set_weight", name_.c_str());
  TensorView bias_view{bias_.data(), bias_dtype_, {out_}, {}, out.device};
  ctx.backend->linear(out, x, *weight_, bias_.data() ? &bias_view : nullptr);
  if (has_lora_ && ctx.row_slot) apply_lora(ctx, out, x);
}

void Linear::apply_lora(const BatchContext& ctx, TensorView out, TensorView x) const {
  for (size_t i = 0; i < slices_.size(); ++i) {
    ops::LoraArgs args = lora_[i];
    if (args.max_rank == 0) continue;
    args.row_slot = ctx.row_slot;
    args.host_row_slot = ctx.host_row_slot;
    TensorView tmp = ctx.lora_scratch;
    tmp.shape = {ctx.num_tokens, args.max_rank};
    tmp.strides = {args.max_rank, 1};
    ctx.backend->lora_shrink(tmp, x, args);
    TensorView y = slices_.size() == 1 ? out : column_slice(out, slices_[i].offset, slices_[i].size);
    ctx.backend->lora_expand(y, tmp, args);
  }
}

void Linear::set_lora(int slot, size_t slice, const ops::LoraFactors& factors, DType dtype) {
  NB_CHECK(slice < slices_.size() && slot >= 0, "slot %d slice %zu", slot, slice);
  auto& args = lora_[slice];
  const bool grew = args.slots.size() <= static_cast<size_t>(slot);
  if (grew) args.slots.resize(static_cast<size_t>(slot) + 1);
  ops::LoraFactors& cur = args.slots[static_cast<size_t>(slot)];
  const bool same = cur.a == factors.a && cur.b == factors.b && cur.rank == factors.rank &&
                    cur.scaling == factors.scaling && args.dtype == dtype;
  // Clearing an empty slot (every install clears first) changes nothing: skip the upload.
  if (same && !grew) return;
  cur = factors;
  args.dtype = dtype;
  args.max_rank = 0;
  for (const auto& f : args.slots) args.max_rank = std::max(args.max_rank, f.rank);
  has_lora_ = max_lora_rank() > 0;
  upload_lora_table(slice, slot);
}

void Linear::clear_lora(int slot) {
  for (size_t i = 0; i < slices_.size(); ++i) {
    if (static_cast<size_t>(slot) < lora_[i].slots.size()) set_lora(slot, i, ops::LoraFactors{}, lora_[i].dtype);
  }
}

void Linear::reserve_lora_slots(int n, ops::Backend* backend) {
  if (backend) lora_backend_ = backend;
  for (size_t i = 0; i < lora_.size(); ++i) {
    auto& args = lora_[i];
    if (args.slots.size() < static_cast<size_t>(n)) args.slots.resize(static_cast<size_t>(n));
    if (lora_tables_[i].bytes() != args.slots.size() * sizeof(ops::LoraFactors)) upload_lora_table(i, -1);
  }
}

void Linear::upload_lora_table(size_t slice, int slot) {
  if (!lora_backend_ || lora_backend_->device() == Device::kCpu) return;
  ops::LoraArgs& args = lora_[slice];
  ops::DeviceBuffer& table = lora_tables_[slice];
  const size_t entry = sizeof(ops::LoraFactors), bytes = args.slots.size() * entry;
  if (bytes == 0) return;
  if (table.bytes() != bytes) {
    table = ops::DeviceBuffer(*lora_backend_, bytes);  // only when the slot count grows
    slot = -1;
  }
  if (slot < 0) {
    lora_backend_->upload(table.data(), args.slots.data(), bytes);
  } else {
    lora_backend_->upload(static_cast<uint8_t*>(table.data()) + static_cast<size_t>(slot) * entry,
                          &args.slots[static_cast<size_t>(slot)], entry);
  }
  args.device_slots = table.as<ops::LoraFactors>();
}

bool Linear::lora_device_driven() const {
  for (const auto& a : lora_)
    if (a.max_rank > 0 && !a.device_slots) return false;
  return true;
}

int Linear::max_lora_rank() const {
  int r = 0;
  for (const auto& a : lora_) r = std::max(r, a.max_rank);
  return r;
}

}  // namespace nb::nn
