// The serving sampler: plain requests pick exactly the backend's token (same rule, seed and step);
// OpenAI's presence/frequency penalties, min-p and log-probabilities are checked against direct
// computations written here from their definitions.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backends/cpu/cpu_backend.h"
#include "engine/sampler.h"

namespace nb::engine {
namespace {

std::vector<float> random_logits(int64_t vocab, std::mt19937& rng, float scale = 3.f) {
  std::normal_distribution<float> n(0.f, scale);
  std::vector<float> v(static_cast<size_t>(vocab));
  for (float& x : v) x = n(rng);
  return v;
}

TEST(Sampler, PlainRequestsMatchTheBackend) {
  std::mt19937 rng(std::random_device{}());
  auto cpu = make_cpu_backend(false);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t vocab = 50 + static_cast<int64_t>(rng() % 3000);
    std::vector<float> l = random_logits(vocab, rng);
    ops::SamplingParams p;
    p.temperature = trial % 4 == 0 ? 0.f : 0.3f + static_cast<float>(rng() % 100) / 50.f;
    p.top_k = trial % 3 == 0 ? static_cast<int>(rng() % 40) : 0;
    p.top_p = trial % 5 == 0 ? 0.5f + static_cast<float>(rng() % 50) / 100.f : 1.f;
    p.seed = rng();
    const uint64_t step = rng() % 100;
    int32_t want = -1;
    cpu->sample(&want, TensorView{l.data(), DType::kF32, {1, vocab}, {}, Device::kCpu}, {p}, step);
    SampleOptions o;
    o.temperature = p.temperature;
    o.top_k = p.top_k;
    o.top_p = p.top_p;
    o.seed = p.seed;
    o.step = step;
    EXPECT_EQ(sample_token(l.data(), vocab, o).id, want) << "trial " << trial;
  }
}

TEST(Sampler, PenaltiesFollowOpenAi) {
  // Greedy: token 3 leads by 1.0; frequency 0.3 x 2 occurrences + presence 0.5 = 1.1 moves it below 7.
  std::vector<float> l(10, 0.f);
  l[3] = 2.0f;
  l[7] = 1.0f;
  std::unordered_map<int32_t, int> counts{{3, 2}, {5, 1}};
  SampleOptions o;
  o.counts = &counts;
  EXPECT_EQ(sample_token(l.data(), 10, o).id, 3) << "no penalty set";
  o.presence_penalty = 0.5f;
  o.frequency_penalty = 0.3f;
  EXPECT_EQ(sample_token(l.data(), 10, o).id, 7);
  o.presence_penalty = 0.3f;  // 0.3 + 0.6 = 0.9 < 1.0
  EXPECT_EQ(sample_token(l.data(), 10, o).id, 3);
  o.presence_penalty = -5.f;  // negative penalties encourage repetition
  l[5] = 1.9f;
  EXPECT_EQ(sample_token(l.data(), 10, o).id, 5);
}

TEST(Sampler, MinPKeepsOnlyTokensNearTheBest) {
  std::mt19937 rng(std::random_device{}());
  const int64_t vocab = 400;
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<float> l = random_logits(vocab, rng);
    SampleOptions o;
    o.temperature = 0.5f + static_cast<float>(trial % 5) * 0.3f;
    o.min_p = 0.05f + static_cast<float>(trial % 7) * 0.1f;
    // Allowed: p_i >= min_p * p_max after temperature.
    float mx = *std::max_element(l.begin(), l.end());
    for (int draw = 0; draw < 20; ++draw) {
      o.seed = rng();
      const int32_t id = sample_token(l.data(), vocab, o).id;
      const double ratio = std::exp((static_cast<double>(l[static_cast<size_t>(id)]) - mx) / o.temperature);
      EXPECT_GE(ratio, o.min_p * (1 - 1e-5)) << "trial " << trial << " token " << id;
    }
  }
}

TEST(Sampler, LogprobsAreTheRawLogSoftmax) {
  std::mt19937 rng(std::random_device{}());
  const int64_t vocab = 777;
  std::vector<float> l = random_logits(vocab, rng);
  SampleOptions o;
  o.temperature = 0.7f;
  o.seed = 5;
  o.logprobs = 5;
  o.presence_penalty = 1.f;  // penalties change the choice, not the reported (raw) log-probabilities
  std::unordered_map<int32_t, int> counts{{1, 1}};
  o.counts = &counts;
  const SampleResult r = sample_token(l.data(), vocab, o);
  double mx = -1e30, total = 0;
  for (float v : l) mx = std::max(mx, static_cast<double>(v));
  for (float v : l) total += std::exp(v - mx);
  auto lp = [&](int32_t id) { return static_cast<double>(l[static_cast<size_t>(id)]) - mx - std::log(total); };
  EXPECT_NEAR(r.logprob, lp(r.id), 1e-5);
  ASSERT_EQ(r.top.size(), 5u);
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  for (int32_t i = 0; i < vocab; ++i) order[static_cast<size_t>(i)] = i;
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(r.top[i].first, order[i]);
    EXPECT_NEAR(r.top[i].second, lp(order[i]), 1e-5);
  }
  o.logprobs = 0;  // the chosen token only
  const SampleResult r0 = sample_token(l.data(), vocab, o);
  EXPECT_TRUE(r0.top.empty());
  EXPECT_NEAR(r0.logprob, lp(r0.id), 1e-5);
}

}  // namespace
}  // namespace nb::engine
