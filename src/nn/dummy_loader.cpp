#include "nn/dummy_loader.h"

#include <chrono>
#include <cmath>
#include <cstring>

#include "nn/checkpoint_loader.h"
#include "nn/moe.h"
#include "quant/quantized_weight.h"

namespace nb::nn {

namespace {
double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// splitmix64: 8 random bytes per call, fast enough to make tens of GB of benchmark weights.
uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void random_bytes(uint8_t* p, size_t n, std::mt19937_64& rng) {
  uint64_t state = rng();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t r = splitmix(state);
    std::memcpy(p + i, &r, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<uint8_t>(splitmix(state));
}

// Values offset + scale * u, u uniform in [-1, 1) on a grid of 2^-15.
HostTensor random_bf16(const Shape& shape, float scale, float offset, std::mt19937_64& rng) {
  HostTensor t(DType::kBF16, shape);
  auto* p = t.as<uint16_t>();
  uint64_t state = rng();
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; i += 4) {
    const uint64_t r = splitmix(state);
    for (int64_t j = 0; j < 4 && i + j < n; ++j) {
      const float u = static_cast<float>(static_cast<int16_t>(r >> (16 * j))) / 32768.f;
      p[i + j] = float_to_bf16(offset + scale * u);
    }
  }
  return t;
}
}  // namespace

Status DummyLoader::load_linear(Linear& linear, bool with_bias, const std::string& source_module) {
  const double start = seconds_now(), converted = convert_seconds_;
  Status st = make_linear(linear, with_bias);
  generate_seconds_ += seconds_now() - start - (convert_seconds_ - converted);
  (void)source_module;
  return st;
}

// Random codes and scales around 1/(8 sqrt(in)), so activations stay O(1) through many layers.
quant::QuantizedWeight DummyLoader::random_quantized(int64_t out, int64_t in) {
  auto w = quant::make_quantized_weight(out, in, spec_.bits,
                                        spec_.group_size > 0 ? quant::QuantStrategy::kGroup : quant::QuantStrategy::kChannel,
                                        spec_.group_size, true, DType::kBF16);
  random_bytes(w.codes.data(), w.codes.size(), rng_);
  auto* s = w.scales.as<uint16_t>();
  std::uniform_real_distribution<float> u(0.5f, 1.5f);
  const float base = 1.0f / (8.0f * std::sqrt(static_cast<float>(in)));
  for (int64_t i = 0; i < w.scales.numel(); ++i) s[i] = float_to_bf16(base * u(rng_));
  return w;
}

Status DummyLoader::make_linear(Linear& linear, bool with_bias) {
  const int64_t out = linear.out_features(), in = linear.in_features();
  bool quantize = spec_.bits > 0 && (linear.name() != "lm_head" || spec_.quantize_lm_head);
  std::unique_ptr<ops::PackedWeight> packed;
  if (quantize) {
    quant::QuantizedWeight w = random_quantized(out, in);
    const double t0 = seconds_now();
    NB_ASSIGN_OR_RETURN(packed, backend_->pack_quantized(quant_view(w)));
    convert_seconds_ += seconds_now() - t0;
  } else {
    HostTensor w = random_bf16({out, in}, 1.0f / std::sqrt(static_cast<float>(in)), 0.f, rng_);
    const double t0 = seconds_now();
    NB_ASSIGN_OR_RETURN(packed, backend_->pack_dense(w.view()));
    convert_seconds_ += seconds_now() - t0;
  }
  linear_bytes_ += packed->device_bytes;
  ops::DeviceBuffer bias;
  if (with_bias) {
    HostTensor b = random_bf16({out}, 0.1f, 0.f, rng_);
    bias = ops::upload_buffer(*backend_, b.data(), b.nbytes());
  }
  return linear.set_weight(std::move(packed), std::move(bias), DType::kBF16);
}

Status DummyLoader::load_experts(ExpertLinear& x) {
  const double start = seconds_now(), converted = convert_seconds_;
  const int64_t n = x.experts(), out = x.out_features(), in = x.in_features();
  std::unique_ptr<ops::PackedWeight> packed;
  if (spec_.bits > 0) {
    std::vector<quant::QuantizedWeight> experts;
    for (int64_t e = 0; e < n; ++e) {
      experts.push_back(random_quantized(out, in));
    }
    NB_ASSIGN_OR_RETURN(QuantStack st, stack_experts(experts, [&](size_t e) { return x.expert_module(static_cast<int64_t>(e)); }));
    const double t0 = seconds_now();
    NB_ASSIGN_OR_RETURN(packed, backend_->pack_quantized_experts(st.view, n));
    convert_seconds_ += seconds_now() - t0;
  } else {
    HostTensor w = random_bf16({n, out, in}, 1.0f / std::sqrt(static_cast<float>(in)), 0.f, rng_);
    const double t0 = seconds_now();
    NB_ASSIGN_OR_RETURN(packed, backend_->pack_dense_experts(w.view()));
    convert_seconds_ += seconds_now() - t0;
  }
  linear_bytes_ += packed->device_bytes;
  generate_seconds_ += seconds_now() - start - (convert_seconds_ - converted);
  return x.set_weight(std::move(packed));
}

Result<ops::DeviceTensor> DummyLoader::load_dense(const std::string& name, const Shape& shape) {
  (void)name;
  const double start = seconds_now();
  bool norm = shape.size() == 1;  // norm weights around 1, embeddings small
  HostTensor t = random_bf16(shape, norm ? 0.1f : 0.05f, norm ? 1.f : 0.f, rng_);
  const double t0 = seconds_now();
  ops::DeviceTensor d = ops::upload_tensor(*backend_, t.view());
  convert_seconds_ += seconds_now() - t0;
  generate_seconds_ += t0 - start;
  return d;
}

}  // namespace nb::nn
