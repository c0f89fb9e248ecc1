// Reference token sampling: greedy, or temperature -> top-k -> top-p -> draw (transformers' warper
// order). The fast path calls the same code with partial selection, so both pick the same token.
#include <algorithm>
#include <cmath>
#include <random>

#include "backends/cpu/ref/ref_ops.h"
#include "backends/cpu/rows.h"

namespace nb::cpu::ref {

namespace {

// Lowest index among the maxima; NaN entries are skipped (0 when every entry is NaN).
int32_t argmax(const float* l, int64_t vocab) {
  int64_t best = -1;
  for (int64_t v = 0; v < vocab; ++v) {
    if (std::isnan(l[v])) continue;
    if (best < 0 || l[v] > l[best]) best = v;
  }
  return static_cast<int32_t>(best < 0 ? 0 : best);
}

// Uniform double in [0, 1), deterministic per (seed, step).
double uniform(uint64_t seed, uint64_t step) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(step),
                    static_cast<uint32_t>(step >> 32)};
  std::mt19937_64 rng(seq);
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// Candidate order: larger scaled logit first, then lower token id (a strict total order).
struct ByScore {
  const float* z;
  bool operator()(int32_t a, int32_t b) const { return z[a] > z[b] || (z[a] == z[b] && a < b); }
};

// Sorts the first `count` candidates into order (all of them when !partial).
void order_prefix(std::vector<int32_t>& cand, size_t count, const float* z, bool partial) {
  if (!partial || count >= cand.size()) {
    std::sort(cand.begin(), cand.end(), ByScore{z});
  } else {
    std::partial_sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(count), cand.end(), ByScore{z});
  }
}

// top-k: keeps every candidate whose score is >= the k-th largest (ties at the boundary are kept,
// as transformers' TopKLogitsWarper does). Leaves `cand` in index order.
void apply_top_k(std::vector<int32_t>& cand, int top_k, const float* z) {
  if (top_k <= 0 || static_cast<size_t>(top_k) >= cand.size()) return;
  std::vector<int32_t> tmp = cand;
  std::nth_element(tmp.begin(), tmp.begin() + (top_k - 1), tmp.end(), ByScore{z});
  const float threshold = z[tmp[static_cast<size_t>(top_k - 1)]];
  std::vector<int32_t> kept;
  for (int32_t v : cand)
    if (z[v] >= threshold) kept.push_back(v);
  cand.swap(kept);
}

// top-p: keeps the smallest prefix (by descending probability) whose mass reaches top_p, i.e. each
// token whose strictly-higher-ranked mass is below top_p. Sorts only as far as needed when partial.
// Leaves `cand` in index order.
void apply_top_p(std::vector<int32_t>& cand, const float* e, double total, float top_p, const float* z, bool partial) {
  size_t sorted = partial ? std::min<size_t>(cand.size(), 256) : cand.size();
  order_prefix(cand, sorted, z, partial);
  size_t keep = cand.size();
  double above = 0;
  for (size_t i = 0; i < cand.size(); ++i) {
    if (i == sorted) {
      sorted = std::min(cand.size(), sorted * 4);
      order_prefix(cand, sorted, z, partial);
    }
    if (i > 0 && above / total >= top_p) {
      keep = i;
      break;
    }
    above += e[static_cast<size_t>(cand[i])];
  }
  cand.resize(keep);
  std::sort(cand.begin(), cand.end());
}

}  // namespace

int32_t sample_row(const float* logits, int64_t vocab, const ops::SamplingParams& p, uint64_t step, bool partial) {
  if (!(p.temperature > 0.f)) return argmax(logits, vocab);
  std::vector<float> z(static_cast<size_t>(vocab));
  std::vector<int32_t> cand;
  cand.reserve(static_cast<size_t>(vocab));
  for (int64_t v = 0; v < vocab; ++v) {
    z[static_cast<size_t>(v)] = logits[v] / p.temperature;
    if (!std::isnan(z[static_cast<size_t>(v)]) && z[static_cast<size_t>(v)] > -INFINITY) cand.push_back(static_cast<int32_t>(v));
  }
  if (cand.empty()) return argmax(logits, vocab);
  apply_top_k(cand, p.top_k, z.data());
  // Softmax weights over the kept candidates (max subtracted), normaliser summed in index order.
  float mx = -INFINITY;
  for (int32_t v : cand) mx = std::max(mx, z[static_cast<size_t>(v)]);
  std::vector<float> e(static_cast<size_t>(vocab), 0.f);
  double total = 0;
  for (int32_t v : cand) total += (e[static_cast<size_t>(v)] = std::exp(z[static_cast<size_t>(v)] - mx));
  if (p.top_p < 1.f) apply_top_p(cand, e.data(), total, p.top_p, z.data(), partial);
  // Draw: walk the kept tokens in ascending id order (no sort needed when top-p is off).
  double kept_total = 0;
  for (int32_t v : cand) kept_total += e[static_cast<size_t>(v)];
  const double target = uniform(p.seed, step) * kept_total;
  double cum = 0;
  for (int32_t v : cand) {
    cum += e[static_cast<size_t>(v)];
    if (target < cum) return v;
  }
  return cand.back();
}

void sample(int32_t* out_ids, TensorView logits, const std::vector<ops::SamplingParams>& params, uint64_t step) {
  const Rows l = as_rows(logits);
  NB_CHECK(l.dtype == DType::kF32, "sample: logits must be F32, got %s", dtype_name(l.dtype));
  NB_CHECK(params.size() == static_cast<size_t>(l.rows) || params.size() == 1, "sample: %zu params for %lld rows",
           params.size(), static_cast<long long>(l.rows));
  for (int64_t r = 0; r < l.rows; ++r)
    out_ids[r] = sample_row(l.row<float>(r), l.cols, params[params.size() == 1 ? 0 : static_cast<size_t>(r)], step, false);
}

}  // namespace nb::cpu::ref
