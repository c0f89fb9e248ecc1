// Linear: the one door for every matrix product in every model (design.md rule 3).
// A quantized or dense weight in the backend's kernel layout, an optional bias, and the LoRA site:
// y = W x + b + sum over rows' adapters of scaling * B (A x).
// A Linear may be a fusion of several Hugging Face modules (q/k/v, gate/up): each becomes a slice of
// the output with its own name, so adapters address the modules they were trained on.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/context.h"
#include "ops/device_buffer.h"
#include "ops/ops.h"

namespace nb::nn {

struct LoraSlice {
  std::string module;  // Hugging Face module name, e.g. "model.layers.0.self_attn.q_proj"
  int64_t offset = 0;  // output columns [offset, offset + size)
  int64_t size = 0;
};

class Linear {
 public:
  Linear() = default;
  // A Linear computing the single module `name` with logical shape [out, in].
  Linear(std::string name, int64_t out, int64_t in);
  // A fused Linear whose output is the concatenation of `slices` (sizes must add up to out).
  Linear(std::string name, int64_t in, std::vector<LoraSlice> slices);

  // Installs the weight (already converted by the backend) and an optional bias [out] on the device.
  Status set_weight(std::unique_ptr<ops::PackedWeight> weight, ops::DeviceBuffer bias, DType bias_dtype);

  // out: [T, out]; x: [T, in].
  void forward(const BatchContext& ctx, TensorView out, TensorView x) const;

  const std::string& name() const { return name_; }
  int64_t out_features() const { return out_; }
  int64_t in_features() const { return in_; }
  const std::vector<LoraSlice>& slices() const { return slices_; }
  const ops::PackedWeight* weight() const { return weight_.get(); }

  // LoRA factors of adapter slot `slot` for slice `slice` (factors live in device memory owned by
  // the adapter manager). rank 0 clears it. Keeps the slice's device slot table (see
  // reserve_lora_slots) in step: only the changed entry is uploaded.
  void set_lora(int slot, size_t slice, const ops::LoraFactors& factors, DType dtype);
  void clear_lora(int slot);
  // Makes every slice address slots [0, n) (rows may name any of them; unused slots have rank 0).
  // With a backend that has its own memory (CUDA), each slice also gets a device copy of its slot
  // table (ops::LoraArgs::device_slots), allocated here through `backend` (null: the one given
  // before) and reallocated only when n grows: reserve every slot once, up front, and the table's
  // address stays fixed while adapters come and go (CUDA graphs capture it).
  void reserve_lora_slots(int n, ops::Backend* backend = nullptr);
  int max_lora_rank() const;
  // Whether this Linear's LoRA work needs nothing from the host per step (so a step can be
  // recorded as a graph): true without adapters, or when every slice with adapters has a device
  // slot table — which the CUDA backend reads for batches of at most ops::kLoraDecodeMaxRows rows
  // (larger batches plan on the host: never record those with adapters).
  bool lora_device_driven() const;

 private:
  void apply_lora(const BatchContext& ctx, TensorView out, TensorView x) const;
  // Uploads entry `slot` (all entries when -1, or when the table had to be (re)allocated) of
  // slice `slice`'s device slot table.
  void upload_lora_table(size_t slice, int slot);

  std::string name_;
  int64_t out_ = 0, in_ = 0;
  std::vector<LoraSlice> slices_;
  std::unique_ptr<ops::PackedWeight> weight_;
  ops::DeviceBuffer bias_;
  DType bias_dtype_ = DType::kF32;
  // lora_[slice].slots[slot]: the factors of each adapter slot for one slice.
  std::vector<ops::LoraArgs> lora_;
  // lora_tables_[slice]: device copy of lora_[slice].slots (lora_[slice].device_slots points into
  // it); empty on the CPU backend.
  std::vector<ops::DeviceBuffer> lora_tables_;
  ops::Backend* lora_backend_ = nullptr;
  bool has_lora_ = false;
};

// A view of rows [0, rows) and columns [col, col + cols) of a row-major 2-D tensor.
TensorView column_slice(TensorView t, int64_t col, int64_t cols);

}  // namespace nb::nn
