// Where layers get their weights: by Hugging Face tensor/module name, with the logical shape the
// model expects (from the config). The implementation reads the checkpoint through quant/ (any
// format), checks every shape, and converts to the backend's layout after loading.
#pragma once

#include <string>
#include <vector>

#include "nn/linear.h"
#include "ops/device_buffer.h"

namespace nb::nn {

class ExpertLinear;

class WeightLoader {
 public:
  virtual ~WeightLoader() = default;
  virtual ops::Backend& backend() = 0;
  // Loads the Hugging Face modules behind `linear` (one per slice), checking each against its
  // logical shape [slice.size, in], and installs the packed weight and bias.
  // source_module: read the weight of another module (tied lm_head reads model.embed_tokens).
  virtual Status load_linear(Linear& linear, bool with_bias, const std::string& source_module = "") = 0;
  // Loads the E experts behind `experts` (per-expert 2-D modules in any checkpoint format, or a
  // transformers-5 fused 3-D tensor), checks each against [out, in], stacks them (one scheme for
  // all) and installs the packed stack.
  virtual Status load_experts(ExpertLinear& experts) = 0;
  // A dense tensor (norm weight, embedding table) of exactly `shape`, uploaded as stored.
  virtual Result<ops::DeviceTensor> load_dense(const std::string& name, const Shape& shape) = 0;
  virtual bool has_tensor(const std::string& name) const = 0;
  // Whether any tensor of module `module` exists ("lm_head" -> lm_head.weight, lm_head.weight_packed, ...).
  virtual bool has_module(const std::string& module) const = 0;
};

}  // namespace nb::nn
