#include "nn/rope.h"

#include <algorithm>
#include <cmath>

namespace nb::nn {

namespace {

// inv_i = 1 / theta^(2i/d), in float32 as torch evaluates `1.0 / (base ** (arange(0, d, 2).float() / d))`.
std::vector<float> default_inv_freq(double theta, int dim) {
  std::vector<float> inv(static_cast<size_t>(dim / 2));
  for (int i = 0; i < dim / 2; ++i) {
    float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    float p = std::pow(static_cast<float>(theta), exponent);
    inv[static_cast<size_t>(i)] = 1.0f / p;
  }
  return inv;
}

float yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0f;
  return static_cast<float>(0.1 * mscale * std::log(scale) + 1.0);
}

void apply_llama3(const RopeConfig& c, std::vector<float>& inv) {
  double lo = c.original_max_position_embeddings;
  double low_wavelen = lo / c.low_freq_factor;
  double high_wavelen = lo / c.high_freq_factor;
  for (float& f : inv) {
    double wavelen = 2.0 * M_PI / f;
    if (wavelen > low_wavelen) {
      f = static_cast<float>(f / c.factor);
    } else if (wavelen >= high_wavelen) {
      double smooth = (lo / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
      f = static_cast<float>((1.0 - smooth) * f / c.factor + smooth * f);
    }
  }
}

float apply_yarn(const RopeConfig& c, std::vector<float>& inv) {
  int dim = c.rotary_dim;
  double lo = c.original_max_position_embeddings > 0 ? c.original_max_position_embeddings : c.max_position_embeddings;
  auto correction_dim = [&](double rotations) {
    return dim * std::log(lo / (rotations * 2.0 * M_PI)) / (2.0 * std::log(c.theta));
  };
  double low = correction_dim(c.beta_fast), high = correction_dim(c.beta_slow);
  if (c.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;
  std::vector<float> extrapolation = inv;
  for (size_t i = 0; i < inv.size(); ++i) {
    double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    double extrapolation_factor = 1.0 - ramp;
    float interpolation = static_cast<float>(extrapolation[i] / c.factor);
    inv[i] = static_cast<float>(interpolation * (1.0 - extrapolation_factor) + extrapolation[i] * extrapolation_factor);
  }
  if (c.attention_factor > 0) return static_cast<float>(c.attention_factor);
  if (c.mscale > 0 && c.mscale_all_dim > 0)
    return yarn_get_mscale(c.factor, c.mscale) / yarn_get_mscale(c.factor, c.mscale_all_dim);
  return yarn_get_mscale(c.factor, 1.0);
}

}  // namespace

Result<RopeFrequencies> compute_rope(const RopeConfig& c, int64_t seq_len) {
  if (c.rotary_dim <= 0 || c.rotary_dim % 2)
    return invalid_argument(strformat("rope: rotary dimension must be a positive even number, got %d", c.rotary_dim));
  if (c.theta <= 0) return invalid_argument(strformat("rope: rope_theta must be positive, got %g", c.theta));
  RopeFrequencies r;
  if (c.type == "default") {
    r.inv_freq = default_inv_freq(c.theta, c.rotary_dim);
  } else if (c.type == "linear") {
    r.inv_freq = default_inv_freq(c.theta, c.rotary_dim);
    for (float& f : r.inv_freq) f = static_cast<float>(f / c.factor);
  } else if (c.type == "dynamic") {
    double theta = c.theta;
    if (seq_len > c.max_position_embeddings) {
      double d = c.rotary_dim;
      theta *= std::pow(c.factor * static_cast<double>(seq_len) / c.max_position_embeddings - (c.factor - 1.0),
                        d / (d - 2.0));
    }
    r.inv_freq = default_inv_freq(theta, c.rotary_dim);
  } else if (c.type == "llama3") {
    if (c.original_max_position_embeddings <= 0)
      return invalid_argument("rope llama3: original_max_position_embeddings is required");
    r.inv_freq = default_inv_freq(c.theta, c.rotary_dim);
    apply_llama3(c, r.inv_freq);
  } else if (c.type == "yarn") {
    r.inv_freq = default_inv_freq(c.theta, c.rotary_dim);
    r.attention_factor = apply_yarn(c, r.inv_freq);
  } else {
    return unsupported(strformat("rope type '%s' (supported: default, linear, dynamic, llama3, yarn)", c.type.c_str()));
  }
  if ((c.type == "linear" || c.type == "dynamic" || c.type == "llama3" || c.type == "yarn") && c.factor <= 0)
    return invalid_argument(strformat("rope %s: factor must be positive, got %g", c.type.c_str(), c.factor));
  return r;
}

}  // namespace nb::nn
