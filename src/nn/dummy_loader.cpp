#include "nn/dummy_loader.h"

#include <cmath>

#include "nn/checkpoint_loader.h"
#include "quant/quantized_weight.h"

namespace nb::nn {

namespace {
HostTensor random_bf16(const Shape& shape, float scale, float offset, std::mt19937_64& rng) {
  HostTensor t(DType::kBF16, shape);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  auto* p = t.as<uint16_t>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = float_to_bf16(offset + scale * u(rng));
  return t;
}
}  // namespace

Status DummyLoader::load_linear(Linear& linear, bool with_bias, const std::string& source_module) {
  const int64_t out = linear.out_features(), in = linear.in_features();
  bool quantize = spec_.bits > 0 && (linear.name() != "lm_head" || spec_.quantize_lm_head);
  std::unique_ptr<ops::PackedWeight> packed;
  if (quantize) {
    auto w = quant::make_quantized_weight(out, in, spec_.bits,
                                          spec_.group_size > 0 ? quant::QuantStrategy::kGroup : quant::QuantStrategy::kChannel,
                                          spec_.group_size, true, DType::kBF16);
    for (auto& byte : w.codes) byte = static_cast<uint8_t>(rng_());
    auto* s = w.scales.as<uint16_t>();
    std::uniform_real_distribution<float> u(0.5f, 1.5f);
    float base = 1.0f / (8.0f * std::sqrt(static_cast<float>(in)));
    for (int64_t i = 0; i < w.scales.numel(); ++i) s[i] = float_to_bf16(base * u(rng_));
    NB_ASSIGN_OR_RETURN(packed, backend_->pack_quantized(quant_view(w)));
  } else {
    HostTensor w = random_bf16({out, in}, 1.0f / std::sqrt(static_cast<float>(in)), 0.f, rng_);
    NB_ASSIGN_OR_RETURN(packed, backend_->pack_dense(w.view()));
  }
  linear_bytes_ += packed->device_bytes;
  ops::DeviceBuffer bias;
  if (with_bias) {
    HostTensor b = random_bf16({out}, 0.1f, 0.f, rng_);
    bias = ops::upload_buffer(*backend_, b.data(), b.nbytes());
  }
  return linear.set_weight(std::move(packed), std::move(bias), DType::kBF16);
}

Result<ops::DeviceTensor> DummyLoader::load_dense(const std::string& name, const Shape& shape) {
  bool norm = shape.size() == 1;  // norm weights around 1, embeddings small
  HostTensor t = random_bf16(shape, norm ? 0.1f : 0.05f, norm ? 1.f : 0.f, rng_);
  return ops::upload_tensor(*backend_, t.view());
}

}  // namespace nb::nn
