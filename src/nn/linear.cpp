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
    if (lora_[i].max_rank() == 0) continue;
    TensorView y = slices_.size() == 1 ? out : column_slice(out, slices_[i].offset, slices_[i].size);
    lora_[i].apply(*ctx.backend, y, x, ctx.row_slot, ctx.host_row_slot, ctx.lora_scratch);
  }
}

void Linear::set_lora(int slot, size_t slice, const ops::LoraFactors& factors, DType dtype) {
  NB_CHECK(slice < slices_.size() && slot >= 0, "slot %d slice %zu", slot, slice);
  lora_[slice].set(slot, factors, dtype);
  has_lora_ = max_lora_rank() > 0;
}

void Linear::clear_lora(int slot) {
  for (size_t i = 0; i < slices_.size(); ++i) {
    if (static_cast<size_t>(slot) < lora_[i].size()) lora_[i].set(slot, ops::LoraFactors{}, DType::kF32);
  }
  has_lora_ = max_lora_rank() > 0;
}

void Linear::reserve_lora_slots(int n, ops::Backend* backend) {
  if (backend) lora_backend_ = backend;
  for (LoraSite& site : lora_) site.reserve(n, lora_backend_);
}

bool Linear::lora_device_driven() const {
  for (const LoraSite& site : lora_)
    if (!site.device_driven()) return false;
  return true;
}

int Linear::max_lora_rank() const {
  int r = 0;
  for (const LoraSite& site : lora_) r = std::max(r, site.max_rank());
  return r;
}

// ---- LoraSite --------------------------------------------------------------------------------------

void LoraSite::set(int index, const ops::LoraFactors& factors, DType dtype, bool upload_now) {
  NB_CHECK(index >= 0, "LoRA site index %d", index);
  const bool grew = args_.slots.size() <= static_cast<size_t>(index);
  if (grew) args_.slots.resize(static_cast<size_t>(index) + 1);
  ops::LoraFactors& cur = args_.slots[static_cast<size_t>(index)];
  const bool same = cur.a == factors.a && cur.b == factors.b && cur.rank == factors.rank &&
                    cur.scaling == factors.scaling && (factors.rank == 0 || args_.dtype == dtype);
  // Clearing an empty entry (every install clears first) changes nothing: skip the upload.
  if (same && !grew) return;
  cur = factors;
  if (factors.rank > 0) args_.dtype = dtype;
  args_.max_rank = 0;
  for (const auto& f : args_.slots) args_.max_rank = std::max(args_.max_rank, f.rank);
  if (upload_now) upload(grew ? -1 : index);
}

void LoraSite::reserve(int n, ops::Backend* backend) {
  if (backend) backend_ = backend;
  if (args_.slots.size() < static_cast<size_t>(n)) args_.slots.resize(static_cast<size_t>(n));
  if (table_.bytes() != args_.slots.size() * sizeof(ops::LoraFactors)) upload(-1);
}

void LoraSite::upload_all() { upload(-1); }

void LoraSite::upload(int index) {
  if (!backend_ || backend_->device() == Device::kCpu) return;
  const size_t entry = sizeof(ops::LoraFactors), bytes = args_.slots.size() * entry;
  if (bytes == 0) return;
  if (table_.bytes() != bytes) {
    table_ = ops::DeviceBuffer(*backend_, bytes);  // only when the index count grows
    index = -1;
  }
  if (index < 0) {
    backend_->upload(table_.data(), args_.slots.data(), bytes);
  } else {
    backend_->upload(static_cast<uint8_t*>(table_.data()) + static_cast<size_t>(index) * entry,
                     &args_.slots[static_cast<size_t>(index)], entry);
  }
  args_.device_slots = table_.as<ops::LoraFactors>();
}

void LoraSite::apply(ops::Backend& backend, TensorView y, TensorView x, const int32_t* row_index,
                     const int32_t* host_row_index, TensorView scratch) const {
  if (args_.max_rank == 0 || !row_index) return;
  ops::LoraArgs args = args_;
  args.row_slot = row_index;
  args.host_row_slot = host_row_index;
  TensorView tmp = scratch;
  tmp.shape = {x.dim(0), args.max_rank};
  tmp.strides = {args.max_rank, 1};
  NB_CHECK(scratch.numel() >= x.dim(0) * args.max_rank, "LoRA scratch of %lld elements for %lld rows of rank %d",
           static_cast<long long>(scratch.numel()), static_cast<long long>(x.dim(0)), args.max_rank);
  backend.lora_shrink(tmp, x, args);
  backend.lora_expand(y, tmp, args);
}

}  // namespace nb::nn
