// Sampling: greedy (lowest index on ties, NaN skipped), top-k = 1 and a tiny top-p reduce to greedy,
// determinism per (seed, step), fast identical to reference, and the empirical distribution over
// many seeds against softmax(logits / T) computed here, plain and after top-k / top-p filtering
// (each frequency within 5 standard errors + 0.002).
#include <algorithm>
#include <numeric>

#include "ops_test_util.h"

namespace nb::opstest {
namespace {

int32_t sample_one(ops::Backend& b, std::vector<float>& logits, const ops::SamplingParams& p, uint64_t step) {
  int32_t id = -1;
  b.sample(&id, view(logits, {1, static_cast<int64_t>(logits.size())}), {p}, step);
  return id;
}

TEST(Sample, GreedyTiesNanAndBatch) {
  Backends be;
  Rng rng(1);
  for (ops::Backend* b : {be.ref.get(), be.fast.get()}) {
    std::vector<float> l = rng.vec(10);
    l[3] = 5.f;
    l[7] = 5.f;
    l[1] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_EQ(sample_one(*b, l, {}, 0), 3) << b->name();
    // A batch of rows, each with its own parameters.
    std::vector<float> batch = rng.vec(3 * 50);
    batch[0 * 50 + 11] = 9.f;
    batch[1 * 50 + 49] = 9.f;
    batch[2 * 50 + 0] = 9.f;
    std::vector<int32_t> ids(3, -1);
    b->sample(ids.data(), view(batch, {3, 50}), {{}, {}, {}}, 0);
    EXPECT_EQ(ids, (std::vector<int32_t>{11, 49, 0})) << b->name();
  }
}

TEST(Sample, ReducesToGreedyAndIsDeterministic) {
  NB_SEED_TRACE();
  Backends be;
  Rng rng(2);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> l = rng.vec(static_cast<size_t>(rng.randint(2, 300)));
    for (auto& v : l) v *= 4.f;
    const int32_t greedy = sample_one(*be.ref, l, {}, 0);
    ops::SamplingParams p;
    p.temperature = rng.uniform(0.3f, 2.f);
    p.seed = rng.gen()();
    p.top_k = 1;
    EXPECT_EQ(sample_one(*be.fast, l, p, 5), greedy);
    p.top_k = 0;
    p.top_p = 1e-6f;
    EXPECT_EQ(sample_one(*be.fast, l, p, 5), greedy);
    // Random settings: fast and reference pick the same token; same (seed, step) -> same token.
    p.top_k = rng.randint(0, 1) ? rng.randint(1, 50) : 0;
    p.top_p = rng.randint(0, 1) ? rng.uniform(0.1f, 1.f) : 1.f;
    const uint64_t step = static_cast<uint64_t>(rng.randint(0, 1000));
    const int32_t a = sample_one(*be.fast, l, p, step);
    EXPECT_EQ(a, sample_one(*be.ref, l, p, step));
    EXPECT_EQ(a, sample_one(*be.fast, l, p, step));
  }
}

// Draws `n` tokens over seeds and returns the frequency of each token.
std::vector<double> frequencies(ops::Backend& b, std::vector<float>& logits, ops::SamplingParams p, int n) {
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < n; ++i) {
    p.seed = base_seed() + static_cast<uint64_t>(i) * 7919u;
    f[static_cast<size_t>(sample_one(b, logits, p, static_cast<uint64_t>(i % 13)))] += 1.0 / n;
  }
  return f;
}

void expect_distribution(const std::vector<double>& freq, const std::vector<double>& prob, int n) {
  for (size_t i = 0; i < prob.size(); ++i)
    EXPECT_NEAR(freq[i], prob[i], 5 * std::sqrt(prob[i] * (1 - prob[i]) / n) + 0.002) << "token " << i;
}

TEST(Sample, EmpiricalDistributionMatchesSoftmax) {
  NB_SEED_TRACE();
  Backends be;
  std::vector<float> logits = {1.0f, 2.5f, -0.5f, 2.0f, 0.3f, 1.7f, -2.0f, 0.9f};
  const float temp = 0.8f;
  const int n = 20000;
  std::vector<double> prob(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) prob[i] = std::exp(static_cast<double>(logits[i]) / temp);
  const double total = std::accumulate(prob.begin(), prob.end(), 0.0);
  for (auto& v : prob) v /= total;
  std::vector<size_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return prob[a] > prob[b]; });
  auto restricted = [&](size_t keep) {
    std::vector<double> r(prob.size(), 0.0);
    double s = 0;
    for (size_t i = 0; i < keep; ++i) s += prob[order[i]];
    for (size_t i = 0; i < keep; ++i) r[order[i]] = prob[order[i]] / s;
    return r;
  };
  ops::SamplingParams p;
  p.temperature = temp;
  expect_distribution(frequencies(*be.fast, logits, p, n), prob, n);
  p.top_k = 3;
  expect_distribution(frequencies(*be.fast, logits, p, n), restricted(3), n);
  // top-p 0.7: the smallest prefix (descending) whose mass reaches 0.7.
  p.top_k = 0;
  p.top_p = 0.7f;
  size_t keep = 0;
  for (double above = 0; keep < order.size() && (keep == 0 || above < 0.7); ++keep) above += prob[order[keep]];
  expect_distribution(frequencies(*be.ref, logits, p, n), restricted(keep), n);
}

}  // namespace
}  // namespace nb::opstest
