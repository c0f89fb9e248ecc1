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

// The LoRA factors of one output range of a projection for every adapter slot (or, for experts,
// every (slot, expert): index slot * E + e), kept in host memory and, on backends with their own
// memory, mirrored in a device table that LoraArgs::device_slots points to.
class LoraSite {
 public:
  // Factors at `index` (rank 0 clears it). upload = false defers the device table to upload_all().
  void set(int index, const ops::LoraFactors& factors, DType dtype, bool upload = true);
  // Makes the site address indices [0, n) (rows may name any of them; unused ones have rank 0), with a
  // device table allocated through `backend` (null: the one given before) when it has its own memory.
  void reserve(int n, ops::Backend* backend);
  void upload_all();
  // y [M, N] += scaling * B (A x) for each row's index (row_index[m] < 0: nothing); x: [M, K];
  // scratch: F32 with at least M * max_rank elements.
  void apply(ops::Backend& backend, TensorView y, TensorView x, const int32_t* row_index, const int32_t* host_row_index,
             TensorView scratch) const;
  int max_rank() const { return args_.max_rank; }
  size_t size() const { return args_.slots.size(); }
  // False when some index has factors but the device has no table (the step must plan on the host).
  bool device_driven() const { return args_.max_rank == 0 || args_.device_slots != nullptr; }

 private:
  void upload(int index);  // -1: the whole table
  ops::LoraArgs args_;
  ops::DeviceBuffer table_;
  ops::Backend* backend_ = nullptr;
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

  std::string name_;
  int64_t out_ = 0, in_ = 0;
  std::vector<LoraSlice> slices_;
  std::unique_ptr<ops::PackedWeight> weight_;
  ops::DeviceBuffer bias_;
  DType bias_dtype_ = DType::kF32;
  // lora_[slice]: the factors of each adapter slot for one slice.
  std::vector<LoraSite> lora_;
  ops::Backend* lora_backend_ = nullptr;
  bool has_lora_ = false;
};

// A view of rows [0, rows) and columns [col, col + cols) of a row-major 2-D tensor.
TensorView column_slice(TensorView t, int64_t col, int64_t cols);

}  // namespace nb::nn
