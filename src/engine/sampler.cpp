#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "backends/cpu/ref/ref_ops.h"

namespace nb::engine {

namespace {

// log-softmax of the raw logits at `ids`: x - max - log(sum exp(x - max)), the sum in double.
struct LogSoftmax {
  float max = 0.f;
  double log_total = 0.0;
  LogSoftmax(const float* x, int64_t n) {
    max = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i)
      if (!std::isnan(x[i])) max = std::max(max, x[i]);
    double total = 0;
    for (int64_t i = 0; i < n; ++i)
      if (!std::isnan(x[i])) total += std::exp(static_cast<double>(x[i]) - max);
    log_total = std::log(total);
  }
  float at(float x) const { return static_cast<float>(static_cast<double>(x) - max - log_total); }
};

std::vector<std::pair<int32_t, float>> top_logprobs(const float* x, int64_t n, int k, const LogSoftmax& ls) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  const size_t take = std::min<size_t>(static_cast<size_t>(k), ids.size());
  std::partial_sort(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(take), ids.end(), [&](int32_t a, int32_t b) {
    return x[a] > x[b] || (x[a] == x[b] && a < b);
  });
  std::vector<std::pair<int32_t, float>> out;
  for (size_t i = 0; i < take; ++i) out.emplace_back(ids[i], ls.at(x[ids[i]]));
  return out;
}

}  // namespace

SampleResult sample_token(const float* logits, int64_t vocab, const SampleOptions& o) {
  SampleResult r;
  const bool penalties = o.counts && !o.counts->empty() && (o.presence_penalty != 0.f || o.frequency_penalty != 0.f);
  const bool min_p = o.min_p > 0.f && o.temperature > 0.f;
  std::vector<float> work;
  const float* z = logits;
  if (penalties || min_p) {
    work.assign(logits, logits + vocab);
    if (penalties) {  // OpenAI: logit -= presence * [count > 0] + frequency * count
      for (const auto& [id, count] : *o.counts)
        if (id >= 0 && id < vocab && count > 0)
          work[static_cast<size_t>(id)] -= o.presence_penalty + o.frequency_penalty * static_cast<float>(count);
    }
    if (min_p) {  // probabilities after temperature; keep p >= min_p * p_max <=> z >= z_max + T ln(min_p)
      float mx = -std::numeric_limits<float>::infinity();
      for (float v : work)
        if (!std::isnan(v)) mx = std::max(mx, v);
      const float cut = mx + o.temperature * std::log(o.min_p);
      for (float& v : work)
        if (v < cut) v = -std::numeric_limits<float>::infinity();
    }
    z = work.data();
  }
  ops::SamplingParams p;
  p.temperature = o.temperature;
  p.top_k = o.top_k;
  p.top_p = o.top_p;
  p.seed = o.seed;
  r.id = cpu::ref::sample_row(z, vocab, p, o.step, /*partial=*/true);
  if (o.logprobs >= 0) {
    const LogSoftmax ls(logits, vocab);
    r.logprob = ls.at(logits[r.id]);
    if (o.logprobs > 0) r.top = top_logprobs(logits, vocab, o.logprobs, ls);
  }
  return r;
}

}  // namespace nb::engine
