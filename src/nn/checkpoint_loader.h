// WeightLoader over a Hugging Face checkpoint directory: every format quant/ reads, converted to the
// backend's layout right after loading (load plain, convert after).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "io/safetensors.h"
#include "nn/weight_loader.h"
#include "quant/quant_config.h"

namespace nb::nn {

class CheckpointLoader : public WeightLoader {
 public:
  static Result<std::unique_ptr<CheckpointLoader>> open(const std::string& model_dir, const std::string& quantization_config,
                                                        ops::Backend& backend);

  ops::Backend& backend() override { return *backend_; }
  Status load_linear(Linear& linear, bool with_bias, const std::string& source_module = "") override;
  Status load_experts(ExpertLinear& experts) override;
  Result<ops::DeviceTensor> load_dense(const std::string& name, const Shape& shape) override;
  bool has_tensor(const std::string& name) const override { return checkpoint_.find(name) != nullptr; }
  bool has_module(const std::string& module) const override;
  const Checkpoint& checkpoint() const { return checkpoint_; }
  const quant::QuantConfig& quant_config() const { return quant_; }

 private:
  CheckpointLoader() = default;
  Checkpoint checkpoint_;
  quant::QuantConfig quant_;
  ops::Backend* backend_ = nullptr;
};

// The canonical weight as the backend interface sees it (a view; `w` must outlive it).
ops::QuantWeightView quant_view(const quant::QuantizedWeight& w);

// E per-expert canonical weights stacked into one (ops::expert_view's layout). All must share bits,
// group size, group count, scale dtype, symmetry and the presence of g_idx; `what(e)` names expert
// e in the error otherwise.
struct QuantStack {
  std::vector<uint8_t> codes;
  HostTensor scales;
  std::vector<int8_t> zeros;
  std::vector<int32_t> g_idx;
  ops::QuantWeightView view;  // points into the arrays above
};
Result<QuantStack> stack_experts(const std::vector<quant::QuantizedWeight>& experts,
                                 const std::function<std::string(size_t)>& what);

}  // namespace nb::nn
