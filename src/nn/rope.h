// Rotary embedding frequencies for every rope scaling variant (formats.md §7.4), computed once at
// load time (dynamic: when the context outgrows max_position_embeddings) in float32 like
// transformers.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace nb::nn {

struct RopeConfig {
  std::string type = "default";  // default | linear | dynamic | llama3 | yarn
  double theta = 10000.0;
  int rotary_dim = 0;            // head_dim * partial_rotary_factor
  int max_position_embeddings = 2048;
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  int original_max_position_embeddings = 0;               // llama3 / yarn (0 = absent)
  double beta_fast = 32.0, beta_slow = 1.0;               // yarn
  double mscale = 0.0, mscale_all_dim = 0.0;              // yarn (0 = absent)
  double attention_factor = 0.0;                          // yarn (0 = absent)
  bool truncate = true;                                   // yarn
  bool neox = true;                                       // rotate_half (false: GPT-J pairs)
};

struct RopeFrequencies {
  std::vector<float> inv_freq;  // [rotary_dim / 2]
  float attention_factor = 1.f;
};

// inv_freq for a context of `seq_len` tokens (only the dynamic variant depends on it).
Result<RopeFrequencies> compute_rope(const RopeConfig& cfg, int64_t seq_len = 0);

}  // namespace nb::nn
