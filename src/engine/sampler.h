// Host-side token sampling for serving: OpenAI's presence/frequency penalties, min-p and
// log-probabilities on top of the backend's sampling rule (temperature -> top-k -> top-p -> draw,
// cpu::ref::sample_row), so a plain greedy or seeded request picks exactly the token `nibble
// generate` picks for the same logits, seed and step.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

namespace nb::engine {

struct SampleOptions {
  float temperature = 0.f;  // 0 = greedy (lowest id among the maxima)
  float top_p = 1.f;
  int top_k = 0;
  float min_p = 0.f;        // drop tokens whose probability (after temperature) < min_p * the best's
  uint64_t seed = 0;
  uint64_t step = 0;        // index of the token being sampled in its sequence (the draw depends on it)
  float presence_penalty = 0.f, frequency_penalty = 0.f;
  const std::unordered_map<int32_t, int>* counts = nullptr;  // generated tokens so far (penalties)
  int logprobs = -1;        // -1: none; k >= 0: the chosen token's log-probability and the k best
};

struct SampleResult {
  int32_t id = 0;
  float logprob = 0.f;                         // log-softmax of the raw logits at `id`
  std::vector<std::pair<int32_t, float>> top;  // the `logprobs` best raw log-probabilities, best first
};

// logits: [vocab] F32 in host memory.
SampleResult sample_token(const float* logits, int64_t vocab, const SampleOptions& options);

}  // namespace nb::engine
