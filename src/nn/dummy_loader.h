// WeightLoader that makes random weights at a model's real shapes (benchmarks: speed does not depend
// on the values, but all-zero data is never used). Quantized Linears get INT4/INT8 codes with
// random scales; everything else random BF16.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include "nn/weight_loader.h"
#include "quant/quantized_weight.h"

namespace nb::nn {

struct DummyWeights {
  int bits = 4;              // 0 = every Linear dense BF16
  int64_t group_size = 128;  // <= 0: channel-wise
  bool quantize_lm_head = false;
  uint64_t seed = 1;
};

class DummyLoader : public WeightLoader {
 public:
  DummyLoader(ops::Backend& backend, DummyWeights spec) : backend_(&backend), spec_(spec), rng_(spec.seed) {}
  ops::Backend& backend() override { return *backend_; }
  Status load_linear(Linear& linear, bool with_bias, const std::string& source_module = "") override;
  Status load_experts(ExpertLinear& experts) override;
  Result<ops::DeviceTensor> load_dense(const std::string& name, const Shape& shape) override;
  bool has_tensor(const std::string& name) const override { return name != "lm_head.weight" || !tied_; }
  bool has_module(const std::string& module) const override { return module != "lm_head" || !tied_; }
  void set_tied(bool tied) { tied_ = tied; }
  // Bytes of all Linear weights as the backend stores them (what one decode step streams).
  uint64_t linear_bytes() const { return linear_bytes_; }
  // Seconds spent handing weights to the backend (upload + conversion to its kernel layouts), as
  // opposed to making the random values.
  double convert_seconds() const { return convert_seconds_; }
  double generate_seconds() const { return generate_seconds_; }  // making the random values

 private:
  Status make_linear(Linear& linear, bool with_bias);
  quant::QuantizedWeight random_quantized(int64_t out, int64_t in);
  ops::Backend* backend_;
  DummyWeights spec_;
  std::mt19937_64 rng_;
  bool tied_ = false;
  uint64_t linear_bytes_ = 0;
  double convert_seconds_ = 0, generate_seconds_ = 0;
};

}  // namespace nb::nn
