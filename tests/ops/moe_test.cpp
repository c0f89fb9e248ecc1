// Mixture-of-experts ops (formats.md §7.3).
// - moe_route: exact cases derived by hand from the transformers routing code (softmax top-k with
//   and without renormalisation; DeepSeek sigmoid + correction bias for the choice only + grouped
//   selection + renorm eps + scaling; ties to the lower index; descending order), weights within
//   2e-7 relative of the double-precision formula (F32 scores, one rounding each step); a sweep where
//   fast and reference agree bit for bit and the reference's choice is a valid top-k of the
//   double-precision scores (no unchosen allowed expert better by more than 1e-6).
// - moe_dispatch: an exact hand case (sorted order, offsets, pair_slots = row_slot[t] * E + ids[p],
//   -1 rows) and a random sweep (every pair once, ascending within its expert, fast == reference).
// - expert_linear: the reference against a double-precision dequantize-then-matmul (tolerance 1e-6
//   of ||truth||), the fast path against the reference (1e-6 of || |x| @ |W_e|^T ||, linear_test's
//   measure) over E, top_k, tokens, K, N, INT4/INT8, group/channel, sym/asym, g_idx, BF16/F16/F32
//   scales, dense BF16/F16/F32 stacks, random/skewed/routed pair assignments (experts without pairs),
//   x by token and by pair, row-strided x and out, BF16 x; a packed stack's expert e is exactly
//   pack_quantized(expert_view(w, e)) used through linear (bit-identical on both backends, also
//   for the fast stack's row slices, row blocks of busy experts and scratch split into batches).
// - moe_combine: exact hand cases (binary fractions) with and without shared / shared_gate, and a
//   sweep where fast == reference bit for bit and the reference is within 1e-6 of double truth
//   normalised by sum |w_j y_j| + |gate * shared| (F32 accumulation of at most 9 terms).
// - pack_*_experts rejections (naming the bad expert), and a batch of no tokens for every op.
#include <array>
#include <numeric>
#include <set>

#include "ops/quant_weight.h"
#include "ops_test_util.h"

namespace nb::opstest {
namespace {

// ---- test-side quantized expert stacks -------------------------------------------------------------

// One canonical quantized weight built by the test (as linear_test's TestQuant).
struct TestQuant {
  int64_t out = 0, in = 0, gs = 0, groups = 0;
  int bits = 4;
  DType sdt = DType::kBF16;
  std::vector<int> q, z;   // [out, in], [out, G]
  std::vector<float> s;    // [out, G], representable in sdt
  std::vector<int32_t> g;  // [in]
  std::vector<uint8_t> codes;

  double weight(int64_t n, int64_t k) const {
    const int64_t gi = n * groups + g[static_cast<size_t>(k)];
    return round_to(static_cast<double>(q[static_cast<size_t>(n * in + k)] - z[static_cast<size_t>(gi)]) * s[static_cast<size_t>(gi)], sdt);
  }
};

TestQuant make_quant(Rng& rng, int64_t out, int64_t in, int bits, int64_t group_size, DType sdt, bool sym, bool act_order) {
  TestQuant w;
  w.out = out, w.in = in, w.bits = bits, w.sdt = sdt;
  w.gs = group_size > 0 ? group_size : in;
  w.groups = (in + w.gs - 1) / w.gs;
  const int qmin = -(1 << (bits - 1)), qmax = (1 << (bits - 1)) - 1;
  w.q.resize(static_cast<size_t>(out * in));
  for (auto& v : w.q) v = rng.randint(qmin, qmax);
  w.s.resize(static_cast<size_t>(out * w.groups));
  for (auto& v : w.s) v = static_cast<float>(round_to(rng.uniform(0.002f, 0.05f), sdt));
  w.z.assign(static_cast<size_t>(out * w.groups), 0);
  if (!sym)
    for (auto& v : w.z) v = rng.randint(qmin, qmax);
  std::vector<int32_t> perm(static_cast<size_t>(in));
  std::iota(perm.begin(), perm.end(), 0);
  if (act_order) std::shuffle(perm.begin(), perm.end(), rng.gen());
  w.g.resize(static_cast<size_t>(in));
  for (int64_t k = 0; k < in; ++k) w.g[static_cast<size_t>(k)] = static_cast<int32_t>(perm[static_cast<size_t>(k)] / w.gs);
  const int64_t row_bytes = bits == 4 ? (in + 1) / 2 : in;
  w.codes.assign(static_cast<size_t>(out * row_bytes), 0);
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < in; ++k) {
      const int v = w.q[static_cast<size_t>(n * in + k)];
      if (bits == 8) {
        w.codes[static_cast<size_t>(n * row_bytes + k)] = static_cast<uint8_t>(static_cast<int8_t>(v));
      } else {
        w.codes[static_cast<size_t>(n * row_bytes + k / 2)] |= static_cast<uint8_t>((v & 0xF) << (4 * (k & 1)));
      }
    }
  return w;
}

// E experts stacked as ops::expert_view describes: every array holds E blocks back to back.
struct TestStack {
  std::vector<TestQuant> e;
  std::vector<uint8_t> codes, scales;
  std::vector<int8_t> zeros;
  std::vector<int32_t> g_idx;
  bool sym = true, act_order = false;

  ops::QuantWeightView view() {
    const TestQuant& f = e.front();
    ops::QuantWeightView v;
    v.out = f.out;
    v.in = f.in;
    v.bits = f.bits;
    v.group_size = f.gs;
    v.num_groups = f.groups;
    v.codes = codes.data();
    v.scale_dtype = f.sdt;
    v.scales = scales.data();
    v.zeros = sym ? nullptr : zeros.data();
    v.g_idx = act_order ? g_idx.data() : nullptr;
    return v;
  }
  double weight(int ex, int64_t n, int64_t k) const { return e[static_cast<size_t>(ex)].weight(n, k); }
};

TestStack make_stack(Rng& rng, int experts, int64_t out, int64_t in, int bits, int64_t gs, DType sdt, bool sym, bool act_order) {
  TestStack st;
  st.sym = sym, st.act_order = act_order;
  for (int i = 0; i < experts; ++i) {
    st.e.push_back(make_quant(rng, out, in, bits, gs, sdt, sym, act_order));
    const TestQuant& w = st.e.back();
    st.codes.insert(st.codes.end(), w.codes.begin(), w.codes.end());
    const auto sc = encode(w.s, sdt);
    st.scales.insert(st.scales.end(), sc.begin(), sc.end());
    st.zeros.insert(st.zeros.end(), w.z.begin(), w.z.end());
    st.g_idx.insert(st.g_idx.end(), w.g.begin(), w.g.end());
  }
  return st;
}

// ---- routing ------------------------------------------------------------------------------------

struct Routing {
  int64_t tokens = 0;
  int top_k = 1, experts = 1;
  std::vector<int32_t> ids, sorted, offsets;
  ops::ExpertRows rows(bool x_by_token) const {
    ops::ExpertRows r;
    r.pairs = tokens * top_k;
    r.top_k = top_k;
    r.num_experts = experts;
    r.sorted_pairs = sorted.data();
    r.expert_offsets = offsets.data();
    r.x_by_token = x_by_token;
    return r;
  }
};

enum class RouteMode { kRandom, kSkewed, kRouted };

// ids [T, top_k], distinct within a token: random; skewed (every token's first choice is one expert);
// or chosen by moe_route from random logits (softmax, renormalised). Then grouped by moe_dispatch.
Routing make_routing(Rng& rng, ops::Backend& b, int64_t tokens, int top_k, int experts, RouteMode mode) {
  Routing r;
  r.tokens = tokens, r.top_k = top_k, r.experts = experts;
  r.ids.resize(static_cast<size_t>(tokens * top_k));
  const int hot = rng.randint(0, experts - 1);
  if (mode == RouteMode::kRouted) {
    std::vector<float> logits = rng.vec(static_cast<size_t>(tokens * experts)), w(static_cast<size_t>(tokens * top_k));
    ops::MoeRouteArgs a;
    a.num_experts = experts;
    a.top_k = top_k;
    a.renormalize = true;
    b.moe_route(view(w, {tokens, top_k}), TensorView{r.ids.data(), DType::kI32, {tokens, top_k}, {}, Device::kCpu},
                view(logits, {tokens, experts}), a);
  } else {
    std::vector<int32_t> perm(static_cast<size_t>(experts));
    for (int64_t t = 0; t < tokens; ++t) {
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng.gen());
      if (mode == RouteMode::kSkewed) std::swap(perm[0], *std::find(perm.begin(), perm.end(), hot));
      for (int j = 0; j < top_k; ++j) r.ids[static_cast<size_t>(t * top_k + j)] = perm[static_cast<size_t>(j)];
    }
  }
  r.sorted.assign(r.ids.size(), -7);
  r.offsets.assign(static_cast<size_t>(experts + 1), -7);
  b.moe_dispatch(r.sorted.data(), r.offsets.data(), nullptr, r.ids.data(), nullptr, tokens, top_k, experts);
  return r;
}

// ---- expert_linear harness ----------------------------------------------------------------------

// x: [x_rows, K] dense; runs expert_linear with x and out optionally inside wider row-strided buffers
// (out poisoned with NaN first) and returns out as a dense [P, N] vector.
std::vector<float> run_expert_linear(ops::Backend& b, const ops::PackedWeight& w, const std::vector<float>& x, int64_t x_rows,
                                     const ops::ExpertRows& rows, bool strided_io) {
  const int64_t k = w.in, n = w.out, p = rows.pairs;
  const int64_t ldx = strided_io ? k + 3 : k, ldo = strided_io ? n + 5 : n, off = strided_io ? 2 : 0;
  std::vector<float> xb(static_cast<size_t>(x_rows * ldx + off), 7.f), ob(static_cast<size_t>(p * ldo + off));
  for (int64_t m = 0; m < x_rows; ++m) std::copy(x.begin() + m * k, x.begin() + (m + 1) * k, xb.begin() + off + m * ldx);
  poison(ob);
  b.expert_linear(strided(ob, p, n, ldo, off), strided(xb, x_rows, k, ldx, off), w, rows);
  std::vector<float> out(static_cast<size_t>(p * n));
  for (int64_t m = 0; m < p; ++m) std::copy(ob.begin() + off + m * ldo, ob.begin() + off + m * ldo + n, out.begin() + m * n);
  return out;
}

// out[p][n] = sum_k x[row(p)][k] * W_{ids[p]}[n][k] in double; magnitude: the same with |.|.
template <class WeightFn>
void truth_expert_linear(const std::vector<float>& x, const Routing& r, bool x_by_token, int64_t n_dim, int64_t k_dim,
                         const WeightFn& weight, std::vector<double>* truth, std::vector<double>* magnitude) {
  const int64_t pairs = r.tokens * r.top_k;
  truth->assign(static_cast<size_t>(pairs * n_dim), 0.0);
  magnitude->assign(truth->size(), 0.0);
  std::vector<std::vector<double>> w(static_cast<size_t>(r.experts));  // dequantized once per used expert
  for (int64_t p = 0; p < pairs; ++p) {
    const int e = r.ids[static_cast<size_t>(p)];
    std::vector<double>& we = w[static_cast<size_t>(e)];
    if (we.empty())
      for (int64_t n = 0; n < n_dim; ++n)
        for (int64_t k = 0; k < k_dim; ++k) we.push_back(weight(e, n, k));
    const int64_t row = x_by_token ? p / r.top_k : p;
    for (int64_t n = 0; n < n_dim; ++n) {
      double acc = 0, mag = 0;
      for (int64_t k = 0; k < k_dim; ++k) {
        const double t = static_cast<double>(x[static_cast<size_t>(row * k_dim + k)]) * we[static_cast<size_t>(n * k_dim + k)];
        acc += t;
        mag += std::abs(t);
      }
      (*truth)[static_cast<size_t>(p * n_dim + n)] = acc;
      (*magnitude)[static_cast<size_t>(p * n_dim + n)] = mag;
    }
  }
}

const int kExperts[] = {1, 3, 8, 60, 64, 256};
const int kTopK[] = {1, 2, 4, 6, 8};
const int64_t kTokens[] = {1, 2, 7, 33, 130};
const RouteMode kModes[] = {RouteMode::kRandom, RouteMode::kSkewed, RouteMode::kRouted};
const char* mode_name(RouteMode m) { return m == RouteMode::kRandom ? "random" : m == RouteMode::kSkewed ? "skewed" : "routed"; }

struct ExpertCase {
  int experts, top_k;
  int64_t tokens, n, k;
  RouteMode mode;
  bool x_by_token, strided_io;
};

// Shapes cycling through every E, top_k (<= E), T, N, K; the big products kept small enough for the
// double truth and the scalar reference.
std::vector<ExpertCase> expert_cases(int count, uint64_t salt) {
  const int64_t ks[] = {1, 7, 64, 130, 257, 33}, ns[] = {1, 3, 17, 64, 129, 40};
  std::vector<ExpertCase> cases;
  for (int i = 0; i < count; ++i) {
    const uint64_t h = salt + static_cast<uint64_t>(i);
    ExpertCase c{};
    c.experts = kExperts[h % 6];
    c.top_k = kTopK[(h / 6 + h) % 5];
    if (c.top_k > c.experts) c.top_k = c.experts;
    c.tokens = kTokens[(h * 7 + 3) % 5];
    c.k = ks[(h * 5 + 1) % 6];
    c.n = ns[(h * 11 + 2) % 6];
    if (c.tokens * c.top_k * c.n * c.k > 6'000'000) c.k = 33, c.n = 17;  // keep the double truth quick
    c.mode = kModes[h % 3 == 0 ? 1 : (h / 3) % 3];
    c.x_by_token = (h / 2) % 2 == 0;
    c.strided_io = (h / 5) % 2 == 1;
    cases.push_back(c);
  }
  return cases;
}

::testing::Message describe(const ExpertCase& c) {
  return ::testing::Message() << "E " << c.experts << " top_k " << c.top_k << " T " << c.tokens << " N " << c.n << " K " << c.k
                              << " " << mode_name(c.mode) << (c.x_by_token ? " x by token" : " x by pair")
                              << (c.strided_io ? " strided" : "");
}

void check_quant_experts(Backends& be, const ExpertCase& c, int bits, DType sdt, bool sym, bool act_order, int64_t gs,
                         uint64_t salt) {
  SCOPED_TRACE(describe(c) << " INT" << bits << " scales " << dtype_name(sdt) << (sym ? " sym" : " asym")
                           << (act_order ? " g_idx" : "") << " gs " << gs);
  Rng rng(salt);
  TestStack st = make_stack(rng, c.experts, c.n, c.k, bits, gs, sdt, sym, act_order);
  auto fw = be.fast->pack_quantized_experts(st.view(), c.experts);
  auto rw = be.ref->pack_quantized_experts(st.view(), c.experts);
  ASSERT_TRUE(fw.is_ok()) << fw.status().to_string();
  ASSERT_TRUE(rw.is_ok()) << rw.status().to_string();
  EXPECT_EQ((*fw)->experts, c.experts);
  EXPECT_EQ((*rw)->experts, c.experts);
  EXPECT_EQ((*fw)->out, c.n);
  EXPECT_EQ((*fw)->in, c.k);
  const Routing r = make_routing(rng, *be.ref, c.tokens, c.top_k, c.experts, c.mode);
  const ops::ExpertRows rows = r.rows(c.x_by_token);
  const int64_t x_rows = c.x_by_token ? c.tokens : c.tokens * c.top_k;
  const std::vector<float> x = rng.vec(static_cast<size_t>(x_rows * c.k));
  std::vector<double> truth, magnitude;
  truth_expert_linear(x, r, c.x_by_token, c.n, c.k, [&](int e, int64_t n, int64_t k) { return st.weight(e, n, k); }, &truth,
                      &magnitude);
  const auto ref = run_expert_linear(*be.ref, **rw, x, x_rows, rows, c.strided_io);
  const auto fast = run_expert_linear(*be.fast, **fw, x, x_rows, rows, !c.strided_io);
  EXPECT_LE(rel_err(ref, truth), 1e-6) << "reference vs double truth";
  EXPECT_LE(err_vs_magnitude(fast, ref, magnitude), 1e-6) << "fast vs reference";
}

// ---- moe_route ------------------------------------------------------------------------------------

struct RouteOut {
  std::vector<float> w;
  std::vector<int32_t> ids;
};

RouteOut route(ops::Backend& b, std::vector<float> logits, int64_t tokens, const ops::MoeRouteArgs& a) {
  RouteOut r;
  r.w.assign(static_cast<size_t>(tokens * a.top_k), std::numeric_limits<float>::quiet_NaN());
  r.ids.assign(r.w.size(), -7);
  b.moe_route(view(r.w, {tokens, a.top_k}), TensorView{r.ids.data(), DType::kI32, {tokens, a.top_k}, {}, Device::kCpu},
              view(logits, {tokens, a.num_experts}), a);
  return r;
}

double sigmoid_d(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Checks both backends against the hand-derived ids and the double-precision weights.
void expect_route(Backends& be, const std::vector<float>& logits, const ops::MoeRouteArgs& a, const std::vector<int32_t>& ids,
                  const std::vector<double>& weights) {
  for (ops::Backend* b : {be.ref.get(), be.fast.get()}) {
    SCOPED_TRACE(b->name());
    const RouteOut r = route(*b, logits, static_cast<int64_t>(logits.size()) / a.num_experts, a);
    EXPECT_EQ(r.ids, ids);
    ASSERT_EQ(r.w.size(), weights.size());
    for (size_t j = 0; j < weights.size(); ++j)
      EXPECT_NEAR(r.w[j], weights[j], 2e-7 * std::abs(weights[j])) << "weight " << j;
  }
}

TEST(Moe, RouteSoftmaxExact) {
  NB_SEED_TRACE();
  Backends be;
  // Mixtral / Qwen: p = softmax(logits); top-k of p, descending, ties to the lower index.
  const std::vector<float> logits = {1.f, 3.f, 2.f, 3.f, -1.f};
  double z = 0;
  for (float l : logits) z += std::exp(static_cast<double>(l));
  const double p1 = std::exp(3.0) / z, p2 = std::exp(2.0) / z, p0 = std::exp(1.0) / z;
  ops::MoeRouteArgs a;
  a.num_experts = 5;
  a.top_k = 3;
  expect_route(be, logits, a, {1, 3, 2}, {p1, p1, p2});  // Qwen2-MoE default: norm_topk_prob false
  a.renormalize = true;                                 // Mixtral: always renormalised
  const double s = 2 * p1 + p2;
  expect_route(be, logits, a, {1, 3, 2}, {p1 / s, p1 / s, p2 / s});
  a.top_k = 1;
  expect_route(be, logits, a, {1}, {1.0});
  a.top_k = 5;
  a.renormalize = false;
  a.scaling = 2.f;
  const double pm = std::exp(-1.0) / z;
  expect_route(be, logits, a, {1, 3, 2, 0, 4}, {2 * p1, 2 * p1, 2 * p2, 2 * p0, 2 * pm});
  // Two tokens, logits all equal in the second: ids 0..k-1 in order, weight 1/E each.
  a.top_k = 2;
  a.scaling = 1.f;
  const std::vector<float> two = {1.f, 3.f, 2.f, 3.f, -1.f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
  expect_route(be, two, a, {1, 3, 0, 1}, {p1, p1, 0.2, 0.2});
  // One expert: the only choice, weight 1.
  ops::MoeRouteArgs one;
  one.num_experts = 1;
  one.top_k = 1;
  expect_route(be, {-3.f, 4.f}, one, {0, 0}, {1.0, 1.0});
}

TEST(Moe, RouteSigmoidGroupedExact) {
  NB_SEED_TRACE();
  Backends be;
  // DeepSeek-V3 noaux_tc on E = 8 in 4 groups of 2: s = sigmoid(l), s' = s + bias (choice only).
  //   l  = [3, -3, 1, 1, 2, 0.5, -1, -2], bias[7] = 0.9
  //   s' ~ [.953, .047, .731, .731, .881, .622, .269, 1.019]
  //   group scores (top-2 sums): g0 1.000, g1 1.462, g2 1.503, g3 1.288 -> keep g2, g1
  //   experts 0 (best unbiased score) and 7 (best biased score) are in dropped groups;
  //   top-3 of {2, 3, 4, 5}: 4, then the tie 2 / 3 -> 2, 3. Weights: unbiased s, renormalised
  //   by (sum + 1e-20), times 2.5.
  const std::vector<float> logits = {3.f, -3.f, 1.f, 1.f, 2.f, 0.5f, -1.f, -2.f};
  std::vector<float> bias(8, 0.f);
  bias[7] = 0.9f;
  ops::MoeRouteArgs a;
  a.num_experts = 8;
  a.top_k = 3;
  a.scoring = ops::MoeScoring::kSigmoid;
  a.correction_bias = bias.data();
  a.num_groups = 4;
  a.topk_groups = 2;
  a.renormalize = true;
  a.renorm_eps = 1e-20f;
  a.scaling = 2.5f;
  const double s4 = sigmoid_d(2), s2 = sigmoid_d(1), s5 = sigmoid_d(0.5), sum = s4 + 2 * s2;
  expect_route(be, logits, a, {4, 2, 3}, {2.5 * s4 / sum, 2.5 * s2 / sum, 2.5 * s2 / sum});
  // The bias moves expert 5 ahead of 2 and 3 (s'5 = .822), but its weight stays its unbiased .622.
  bias[5] = 0.2f;
  const double sum5 = s4 + s5 + s2;
  expect_route(be, logits, a, {4, 5, 2}, {2.5 * s4 / sum5, 2.5 * s5 / sum5, 2.5 * s2 / sum5});
  // No renormalisation, no scaling: the raw sigmoid scores.
  a.renormalize = false;
  a.scaling = 1.f;
  expect_route(be, logits, a, {4, 5, 2}, {s4, s5, s2});
  // Without groups (num_groups 1) the biased best are 7 (1.019), 0 (.953), 4 (.881); weights unbiased.
  a.num_groups = a.topk_groups = 1;
  expect_route(be, logits, a, {7, 0, 4}, {sigmoid_d(-2), sigmoid_d(3), s4});
  // topk_groups == num_groups keeps every group: same as no grouping.
  a.num_groups = a.topk_groups = 4;
  expect_route(be, logits, a, {7, 0, 4}, {sigmoid_d(-2), sigmoid_d(3), s4});
  // Every biased score negative (bias -1): experts of dropped groups are excluded (-inf, as vLLM),
  // not filled with 0 (HF), which would pick 0, 1, 6. Group scores: g0 -1.000, g1 -.538, g2 -.497,
  // g3 -1.612 -> keep g2, g1; top-3 of s' over {2, 3, 4, 5}: 4, 2, 3.
  std::vector<float> negative(8, -1.f);
  a.correction_bias = negative.data();
  a.num_groups = 4;
  a.topk_groups = 2;
  expect_route(be, logits, a, {4, 2, 3}, {s4, s2, s2});
}

TEST(Moe, RouteGroupsOfOneExpert) {
  NB_SEED_TRACE();
  Backends be;
  // E / num_groups == 1: a group's score is its one expert's score (not best + -inf).
  // s = sigmoid([0.5, 2, 1, 1.5]); keep the 2 best groups {1, 3}; top-2 -> 1, 3.
  ops::MoeRouteArgs a;
  a.num_experts = 4;
  a.top_k = 2;
  a.scoring = ops::MoeScoring::kSigmoid;
  a.num_groups = 4;
  a.topk_groups = 2;
  expect_route(be, {0.5f, 2.f, 1.f, 1.5f}, a, {1, 3}, {sigmoid_d(2), sigmoid_d(1.5)});
  // Tied groups go to the lower index: s = sigmoid([1, 1, 1, 2]) keeps group 3, then 0 of the tied
  // 0, 1, 2; top-2 -> 3, 0.
  expect_route(be, {1.f, 1.f, 1.f, 2.f}, a, {3, 0}, {sigmoid_d(2), sigmoid_d(1)});
  // Softmax scores with 2 groups of 4, keep 1: logits [0 .9 .1 0 | .5 .5 .5 .5]; group scores
  // (top-2 sums) (e^.9 + e^.1) / z = 3.56 / z > (e^.5 + e^.5) / z = 3.30 / z: group 0 is kept, and its
  // top-2 are 1 (.9) and 2 (.1) although 4 (.5) is better than 2 overall.
  ops::MoeRouteArgs s;
  s.num_experts = 8;
  s.top_k = 2;
  s.num_groups = 2;
  s.topk_groups = 1;
  const std::vector<float> l = {0.f, .9f, .1f, 0.f, .5f, .5f, .5f, .5f};
  double z = 0;
  for (float v : l) z += std::exp(static_cast<double>(v));
  expect_route(be, l, s, {1, 2}, {std::exp(0.9) / z, std::exp(0.1) / z});
}

// Property check of the reference against double-precision scores, and fast == reference bit for bit.
TEST(Moe, RouteSweepFastVsReference) {
  NB_SEED_TRACE();
  Backends be;
  uint64_t salt = 300;
  int i = 0;
  for (int experts : kExperts)
    for (int top_k : kTopK) {
      if (top_k > experts) continue;
      for (int variant = 0; variant < 4; ++variant, ++i) {
        const int64_t tokens = kTokens[(i + variant) % 5];
        ops::MoeRouteArgs a;
        a.num_experts = experts;
        a.top_k = top_k;
        a.scoring = variant % 2 ? ops::MoeScoring::kSigmoid : ops::MoeScoring::kSoftmax;
        a.renormalize = variant != 0;
        a.renorm_eps = variant == 3 ? 1e-20f : 0.f;
        a.scaling = variant == 3 ? 2.5f : 1.f;
        // Groups where E allows (DeepSeek: 256 in 8 groups, keep 4).
        for (int g : {8, 4, 3, 2})
          if (variant >= 2 && experts % g == 0 && experts / g * (g / 2) >= top_k && g <= experts) {
            a.num_groups = g;
            a.topk_groups = std::max(1, g / 2);
            break;
          }
        Rng rng(salt++);
        std::vector<float> bias = rng.vec(static_cast<size_t>(experts));
        for (auto& b : bias) b *= 0.1f;
        if (variant == 3) a.correction_bias = bias.data();
        std::vector<float> logits = rng.vec(static_cast<size_t>(tokens * experts));
        for (auto& l : logits) l *= 4.f;
        if (variant == 2)  // exact ties: logits on a coarse grid
          for (auto& l : logits) l = std::round(l * 2.f) / 2.f;
        SCOPED_TRACE(::testing::Message() << "E " << experts << " top_k " << top_k << " T " << tokens << " variant " << variant
                                          << " groups " << a.num_groups << "/" << a.topk_groups);
        const RouteOut ref = route(*be.ref, logits, tokens, a), fast = route(*be.fast, logits, tokens, a);
        EXPECT_EQ(fast.ids, ref.ids);
        EXPECT_EQ(std::memcmp(fast.w.data(), ref.w.data(), ref.w.size() * 4), 0) << "weights must be bit-identical";
        // The reference's choice against double scores.
        int bad = 0;
        for (int64_t t = 0; t < tokens && bad < 5; ++t) {
          std::vector<double> s(static_cast<size_t>(experts));
          double mx = -1e30, z = 0;
          for (int e = 0; e < experts; ++e) mx = std::max(mx, static_cast<double>(logits[static_cast<size_t>(t * experts + e)]));
          for (int e = 0; e < experts; ++e) {
            const double l = logits[static_cast<size_t>(t * experts + e)];
            s[static_cast<size_t>(e)] = a.scoring == ops::MoeScoring::kSoftmax ? std::exp(l - mx) : sigmoid_d(l);
            z += s[static_cast<size_t>(e)];
          }
          std::vector<double> c(s.size());
          for (int e = 0; e < experts; ++e) {
            if (a.scoring == ops::MoeScoring::kSoftmax) s[static_cast<size_t>(e)] /= z;
            c[static_cast<size_t>(e)] = s[static_cast<size_t>(e)] + (a.correction_bias ? bias[static_cast<size_t>(e)] : 0.0);
          }
          const int gsize = experts / a.num_groups;
          std::vector<double> gscore(static_cast<size_t>(a.num_groups));
          for (int g = 0; g < a.num_groups; ++g) {
            std::vector<double> v(c.begin() + g * gsize, c.begin() + (g + 1) * gsize);
            std::sort(v.rbegin(), v.rend());
            gscore[static_cast<size_t>(g)] = v[0] + (gsize > 1 ? v[1] : 0.0);
          }
          // Kept groups: the topk_groups best (stable: ties to the lower index); a near-tie at the
          // boundary (within 1e-6) is not judged.
          std::vector<int> order(static_cast<size_t>(a.num_groups));
          std::iota(order.begin(), order.end(), 0);
          std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return gscore[static_cast<size_t>(x)] > gscore[static_cast<size_t>(y)]; });
          const bool grouped = a.topk_groups < a.num_groups;
          const bool group_tie = grouped && std::abs(gscore[static_cast<size_t>(order[static_cast<size_t>(a.topk_groups - 1)])] -
                                                     gscore[static_cast<size_t>(order[static_cast<size_t>(a.topk_groups)])]) < 1e-6;
          const std::set<int> kept(order.begin(), order.begin() + a.topk_groups);
          std::set<int> chosen_groups, chosen;
          const int32_t* ids = ref.ids.data() + t * top_k;
          for (int j = 0; j < top_k; ++j) {
            const double cj = c[static_cast<size_t>(ids[j])];
            chosen.insert(ids[j]);
            chosen_groups.insert(ids[j] / gsize);
            if (grouped && !group_tie) bad += !kept.count(ids[j] / gsize);
            if (j > 0) {
              const double cp = c[static_cast<size_t>(ids[j - 1])];
              bad += cj > cp + 1e-6;             // descending
              bad += cj == cp && ids[j] < ids[j - 1];  // exact ties: lower index first
            }
          }
          bad += static_cast<int>(chosen.size()) != top_k;
          double sum = 0;
          for (int j = 0; j < top_k; ++j) sum += s[static_cast<size_t>(ids[j])];
          const double c_last = c[static_cast<size_t>(ids[top_k - 1])];
          for (int e = 0; e < experts; ++e) {
            if (chosen.count(e)) continue;
            const bool allowed = !grouped || (group_tie ? chosen_groups.count(e / gsize) > 0 : kept.count(e / gsize) > 0);
            // An unchosen expert of a kept group is not better than the last chosen one.
            if (allowed) bad += c[static_cast<size_t>(e)] > c_last + 1e-6 || (c[static_cast<size_t>(e)] == c_last && e < ids[top_k - 1]);
          }
          for (int j = 0; j < top_k; ++j) {
            double w = s[static_cast<size_t>(ids[j])];
            if (a.renormalize) w /= sum + a.renorm_eps;
            w *= a.scaling;
            bad += std::abs(ref.w[static_cast<size_t>(t * top_k + j)] - w) > 1e-6 * std::abs(w) + 1e-30;
          }
        }
        EXPECT_EQ(bad, 0) << "reference routing differs from the double-precision scores";
      }
    }
}

// BF16 logits and a row-strided logits view (a column slice of a wider buffer) give the same routing
// as the F32 logits they hold.
TEST(Moe, RouteLogitsDtypesAndStrides) {
  NB_SEED_TRACE();
  Backends be;
  Rng rng(41);
  const int64_t tokens = 9;
  ops::MoeRouteArgs a;
  a.num_experts = 60;
  a.top_k = 4;
  a.renormalize = true;
  std::vector<float> logits = rand_in(rng, static_cast<size_t>(tokens * 60), DType::kBF16);
  for (ops::Backend* b : {be.ref.get(), be.fast.get()}) {
    SCOPED_TRACE(b->name());
    const RouteOut base = route(*b, logits, tokens, a);
    std::vector<uint8_t> raw = encode(logits, DType::kBF16);
    std::vector<float> w(static_cast<size_t>(tokens * 4)), wide(static_cast<size_t>(tokens * 64), 99.f);
    std::vector<int32_t> ids(w.size());
    const TensorView idv{ids.data(), DType::kI32, {tokens, 4}, {}, Device::kCpu};
    b->moe_route(view(w, {tokens, 4}), idv, view(raw, DType::kBF16, {tokens, 60}), a);
    EXPECT_EQ(ids, base.ids);
    EXPECT_EQ(w, base.w);
    for (int64_t t = 0; t < tokens; ++t)
      std::copy(logits.begin() + t * 60, logits.begin() + (t + 1) * 60, wide.begin() + t * 64 + 3);
    b->moe_route(view(w, {tokens, 4}), idv, strided(wide, tokens, 60, 64, 3), a);
    EXPECT_EQ(ids, base.ids);
    EXPECT_EQ(w, base.w);
  }
}

// ---- moe_dispatch ---------------------------------------------------------------------------------

TEST(Moe, DispatchExact) {
  NB_SEED_TRACE();
  Backends be;
  // T = 3, top_k = 2, E = 4; pairs p = t * 2 + j: experts 2 0 | 2 3 | 0 2.
  const std::vector<int32_t> ids = {2, 0, 2, 3, 0, 2}, row_slot = {1, -1, 0};
  for (ops::Backend* b : {be.ref.get(), be.fast.get()}) {
    SCOPED_TRACE(b->name());
    std::vector<int32_t> sorted(6, -9), offsets(5, -9), slots(6, -9);
    b->moe_dispatch(sorted.data(), offsets.data(), slots.data(), ids.data(), row_slot.data(), 3, 2, 4);
    EXPECT_EQ(sorted, (std::vector<int32_t>{1, 4, 0, 2, 5, 3}));
    EXPECT_EQ(offsets, (std::vector<int32_t>{0, 2, 2, 5, 6}));  // expert 1: no pair
    // row_slot[p / 2] * 4 + ids[p], -1 for token 1 (no adapter).
    EXPECT_EQ(slots, (std::vector<int32_t>{6, 4, -1, -1, 0, 2}));
    b->moe_dispatch(sorted.data(), offsets.data(), slots.data(), ids.data(), nullptr, 3, 2, 4);
    EXPECT_EQ(slots, std::vector<int32_t>(6, -1));
    b->moe_dispatch(sorted.data(), offsets.data(), nullptr, ids.data(), row_slot.data(), 3, 2, 4);  // no pair_slots
    EXPECT_EQ(sorted, (std::vector<int32_t>{1, 4, 0, 2, 5, 3}));
    // No tokens: empty experts.
    b->moe_dispatch(sorted.data(), offsets.data(), slots.data(), ids.data(), row_slot.data(), 0, 2, 4);
    EXPECT_EQ(offsets, (std::vector<int32_t>{0, 0, 0, 0, 0}));
  }
}

TEST(Moe, DispatchSweep) {
  NB_SEED_TRACE();
  Backends be;
  uint64_t salt = 500;
  for (int experts : kExperts)
    for (int top_k : kTopK) {
      if (top_k > experts) continue;
      for (int64_t tokens : kTokens) {
        SCOPED_TRACE(::testing::Message() << "E " << experts << " top_k " << top_k << " T " << tokens);
        Rng rng(salt++);
        const int64_t pairs = tokens * top_k;
        std::vector<int32_t> ids(static_cast<size_t>(pairs)), row_slot(static_cast<size_t>(tokens));
        for (auto& v : ids) v = rng.randint(0, std::min(experts - 1, static_cast<int>(salt % 2 ? experts - 1 : 2)));
        for (auto& v : row_slot) v = rng.randint(-1, 3);
        std::vector<int32_t> rs(static_cast<size_t>(pairs)), ro(static_cast<size_t>(experts + 1)), rp(static_cast<size_t>(pairs));
        std::vector<int32_t> fs = rs, fo = ro, fp = rp;
        be.ref->moe_dispatch(rs.data(), ro.data(), rp.data(), ids.data(), row_slot.data(), tokens, top_k, experts);
        be.fast->moe_dispatch(fs.data(), fo.data(), fp.data(), ids.data(), row_slot.data(), tokens, top_k, experts);
        EXPECT_EQ(fs, rs);
        EXPECT_EQ(fo, ro);
        EXPECT_EQ(fp, rp);
        int bad = 0;
        std::vector<int> seen(static_cast<size_t>(pairs), 0);
        bad += ro[0] != 0 || ro[static_cast<size_t>(experts)] != pairs;
        for (int e = 0; e < experts; ++e)
          for (int32_t i = ro[static_cast<size_t>(e)]; i < ro[static_cast<size_t>(e + 1)]; ++i) {
            const int32_t p = rs[static_cast<size_t>(i)];
            ++seen[static_cast<size_t>(p)];
            bad += ids[static_cast<size_t>(p)] != e;
            if (i > ro[static_cast<size_t>(e)]) bad += p <= rs[static_cast<size_t>(i - 1)];
          }
        for (int64_t p = 0; p < pairs; ++p) {
          bad += seen[static_cast<size_t>(p)] != 1;
          const int32_t slot = row_slot[static_cast<size_t>(p / top_k)];
          bad += rp[static_cast<size_t>(p)] != (slot < 0 ? -1 : slot * experts + ids[static_cast<size_t>(p)]);
        }
        EXPECT_EQ(bad, 0);
      }
    }
}

// ---- expert_linear --------------------------------------------------------------------------------

TEST(Moe, ExpertLinearQuantizedSweep) {
  NB_SEED_TRACE();
  Backends be;
  const auto cases = expert_cases(72, 0);
  int i = 0;
  for (int bits : {4, 8})
    for (DType sdt : {DType::kBF16, DType::kF16, DType::kF32})
      for (bool sym : {true, false})
        for (bool act_order : {false, true})
          for (int64_t gs : {32, 128, 0}) {  // 0 = channel-wise
            check_quant_experts(be, cases[static_cast<size_t>(i)], bits, sdt, sym, act_order, gs, static_cast<uint64_t>(1000 + i));
            ++i;
            if (HasFatalFailure()) return;
          }
}

// Every E x top_k x T at least once with the INT4 table kernels (the decode and prefill shapes).
TEST(Moe, ExpertLinearInt4Shapes) {
  NB_SEED_TRACE();
  Backends be;
  int i = 0;
  for (int experts : kExperts)
    for (int top_k : kTopK) {
      if (top_k > experts) continue;
      for (int64_t tokens : kTokens) {
        // N 513: two row slices in the fast stack (kept to K 33 for the scalar reference's sake).
        const int64_t n = tokens <= 7 && i % 4 == 0 ? 513 : i % 2 ? 40 : 17, k = n == 513 ? 33 : i % 3 == 0 ? 256 : i % 3 == 1 ? 130 : 33;
        ExpertCase c{experts, top_k, tokens, n, k, kModes[i % 3], i % 2 == 0, i % 4 == 1};
        check_quant_experts(be, c, 4, i % 2 ? DType::kF16 : DType::kBF16, i % 5 == 0, i % 7 == 0, i % 3 == 2 ? 0 : 32,
                            static_cast<uint64_t>(2000 + i));
        ++i;
        if (HasFatalFailure()) return;
      }
    }
}

TEST(Moe, ExpertLinearDenseSweep) {
  NB_SEED_TRACE();
  Backends be;
  const auto cases = expert_cases(30, 7);
  int i = 0;
  for (const ExpertCase& c : cases) {
    const DType wdt = std::array<DType, 3>{DType::kBF16, DType::kF16, DType::kF32}[static_cast<size_t>(i % 3)];
    SCOPED_TRACE(describe(c) << " dense " << dtype_name(wdt));
    Rng rng(static_cast<uint64_t>(3000 + i++));
    std::vector<float> wv = rand_in(rng, static_cast<size_t>(c.experts * c.n * c.k), wdt);
    std::vector<uint8_t> raw = encode(wv, wdt);
    const TensorView stack = view(raw, wdt, {c.experts, c.n, c.k});
    auto fw = be.fast->pack_dense_experts(stack);
    auto rw = be.ref->pack_dense_experts(stack);
    ASSERT_TRUE(fw.is_ok() && rw.is_ok());
    EXPECT_EQ((*fw)->experts, c.experts);
    EXPECT_EQ((*rw)->experts, c.experts);
    EXPECT_EQ((*fw)->device_bytes, raw.size());
    const Routing r = make_routing(rng, *be.fast, c.tokens, c.top_k, c.experts, c.mode);
    const int64_t x_rows = c.x_by_token ? c.tokens : c.tokens * c.top_k;
    const std::vector<float> x = rng.vec(static_cast<size_t>(x_rows * c.k));
    std::vector<double> truth, magnitude;
    truth_expert_linear(x, r, c.x_by_token, c.n, c.k,
                        [&](int e, int64_t n, int64_t k) { return static_cast<double>(wv[static_cast<size_t>((e * c.n + n) * c.k + k)]); },
                        &truth, &magnitude);
    const auto rows = r.rows(c.x_by_token);
    const auto ref = run_expert_linear(*be.ref, **rw, x, x_rows, rows, c.strided_io);
    const auto fast = run_expert_linear(*be.fast, **fw, x, x_rows, rows, c.strided_io);
    EXPECT_LE(rel_err(ref, truth), 1e-6) << "reference vs double truth";
    EXPECT_LE(err_vs_magnitude(fast, ref, magnitude), 1e-6) << "fast vs reference";
  }
}

// Expert e of a packed stack computes exactly what pack_quantized(expert_view(w, e)) computes
// through linear on the rows of that expert (same kernels, same rows): bit-identical on both
// backends (the fast stack holds experts of 512 rows or more as row slices: N 600 and 1100 here).
// Also the reference stack's device_bytes is the sum of its experts'.
TEST(Moe, ExpertStackMatchesLinearOfExpertView) {
  NB_SEED_TRACE();
  Backends be;
  struct Scheme {
    int bits;
    DType sdt;
    bool sym, act_order;
    int64_t gs, n, k;
  };
  const Scheme schemes[] = {{4, DType::kBF16, true, false, 128, 40, 256}, {4, DType::kF16, false, true, 32, 17, 130},
                            {8, DType::kBF16, false, false, 0, 33, 64},    {4, DType::kF32, true, true, 64, 9, 257},
                            {8, DType::kF16, true, true, 32, 64, 96},      {4, DType::kBF16, false, false, 32, 600, 64},
                            {8, DType::kF32, true, false, 0, 1100, 40}};
  uint64_t salt = 4000;
  for (const Scheme& sc : schemes)
    for (int64_t tokens : {int64_t{1}, int64_t{7}, int64_t{33}}) {
      SCOPED_TRACE(::testing::Message() << "INT" << sc.bits << " " << dtype_name(sc.sdt) << " N " << sc.n << " K " << sc.k
                                        << " T " << tokens);
      Rng rng(salt++);
      const int experts = 8, top_k = 2;
      TestStack st = make_stack(rng, experts, sc.n, sc.k, sc.bits, sc.gs, sc.sdt, sc.sym, sc.act_order);
      const Routing r = make_routing(rng, *be.ref, tokens, top_k, experts, RouteMode::kRandom);
      const std::vector<float> x = rng.vec(static_cast<size_t>(tokens * sc.k));
      for (ops::Backend* b : {be.ref.get(), be.fast.get()}) {
        SCOPED_TRACE(b->name());
        auto stack = b->pack_quantized_experts(st.view(), experts);
        ASSERT_TRUE(stack.is_ok()) << stack.status().to_string();
        const auto out = run_expert_linear(*b, **stack, x, tokens, r.rows(true), false);
        size_t bytes = 0;
        int differ = 0;
        for (int e = 0; e < experts; ++e) {
          auto one = b->pack_quantized(ops::expert_view(st.view(), e));
          ASSERT_TRUE(one.is_ok());
          bytes += (*one)->device_bytes;
          const int32_t p0 = r.offsets[static_cast<size_t>(e)], p1 = r.offsets[static_cast<size_t>(e + 1)];
          if (p0 == p1) continue;
          std::vector<float> xe, ye(static_cast<size_t>((p1 - p0) * sc.n));
          for (int32_t i = p0; i < p1; ++i) {
            const int64_t t = r.sorted[static_cast<size_t>(i)] / top_k;
            xe.insert(xe.end(), x.begin() + t * sc.k, x.begin() + (t + 1) * sc.k);
          }
          b->linear(view(ye, {p1 - p0, sc.n}), view(xe, {p1 - p0, sc.k}), **one, nullptr);
          for (int32_t i = p0; i < p1; ++i)
            differ += std::memcmp(ye.data() + (i - p0) * sc.n, out.data() + r.sorted[static_cast<size_t>(i)] * sc.n,
                                  static_cast<size_t>(sc.n) * 4) != 0;
        }
        EXPECT_EQ(differ, 0) << "rows differing from linear on expert_view";
        // The fast stack may hold an expert as several row slices, each with its own INT4 tables.
        if (b == be.ref.get()) EXPECT_EQ((*stack)->device_bytes, bytes);
        else EXPECT_GE((*stack)->device_bytes, bytes);
      }
    }
}

// A prefill-sized call whose gathered rows and results exceed one batch of scratch (32 MiB), with
// x by pair (every row gathered), experts packed as row slices (N 600) and an expert of more than
// 256 pairs (split into row blocks): the same rows as the fast linear of each expert's own weight,
// bit for bit.
TEST(Moe, ExpertLinearLargeBatches) {
  NB_SEED_TRACE();
  Backends be;
  Rng rng(47);
  const int experts = 16, top_k = 8;
  // P * (K + N) = 11.3M floats: two batches; the skewed expert's 300 pairs: two blocks of rows.
  const int64_t tokens = 300, n = 600, k = 4096, pairs = tokens * top_k;
  TestStack st = make_stack(rng, experts, n, k, 4, 128, DType::kBF16, true, false);
  auto stack = be.fast->pack_quantized_experts(st.view(), experts);
  ASSERT_TRUE(stack.is_ok());
  const Routing r = make_routing(rng, *be.fast, tokens, top_k, experts, RouteMode::kSkewed);
  const std::vector<float> x = rng.vec(static_cast<size_t>(pairs * k));
  const auto out = run_expert_linear(*be.fast, **stack, x, pairs, r.rows(false), true);
  int differ = 0;
  for (int e = 0; e < experts; ++e) {
    const int32_t p0 = r.offsets[static_cast<size_t>(e)], p1 = r.offsets[static_cast<size_t>(e + 1)];
    if (p0 == p1) continue;
    auto one = be.fast->pack_quantized(ops::expert_view(st.view(), e));
    ASSERT_TRUE(one.is_ok());
    std::vector<float> xe, ye(static_cast<size_t>((p1 - p0) * n));
    for (int32_t i = p0; i < p1; ++i) {
      const int64_t p = r.sorted[static_cast<size_t>(i)];
      xe.insert(xe.end(), x.begin() + p * k, x.begin() + (p + 1) * k);
    }
    be.fast->linear(view(ye, {p1 - p0, n}), view(xe, {p1 - p0, k}), **one, nullptr);
    for (int32_t i = p0; i < p1; ++i)
      differ += std::memcmp(ye.data() + (i - p0) * n, out.data() + r.sorted[static_cast<size_t>(i)] * n, static_cast<size_t>(n) * 4) != 0;
  }
  EXPECT_EQ(differ, 0);
}

// BF16 x (activations of another dtype): the fast path converts while gathering; same as reference.
TEST(Moe, ExpertLinearBf16Activations) {
  NB_SEED_TRACE();
  Backends be;
  Rng rng(45);
  const int experts = 8, top_k = 2;
  const int64_t tokens = 5, n = 17, k = 64;
  TestStack st = make_stack(rng, experts, n, k, 4, 32, DType::kBF16, false, false);
  auto fw = be.fast->pack_quantized_experts(st.view(), experts);
  auto rw = be.ref->pack_quantized_experts(st.view(), experts);
  ASSERT_TRUE(fw.is_ok() && rw.is_ok());
  const Routing r = make_routing(rng, *be.ref, tokens, top_k, experts, RouteMode::kRandom);
  std::vector<float> x = rand_in(rng, static_cast<size_t>(tokens * k), DType::kBF16);
  std::vector<uint8_t> xraw = encode(x, DType::kBF16);
  std::vector<float> of(static_cast<size_t>(tokens * top_k * n)), oref = of;
  poison(of);
  poison(oref);
  be.fast->expert_linear(view(of, {tokens * top_k, n}), view(xraw, DType::kBF16, {tokens, k}), **fw, r.rows(true));
  be.ref->expert_linear(view(oref, {tokens * top_k, n}), view(xraw, DType::kBF16, {tokens, k}), **rw, r.rows(true));
  std::vector<double> truth, magnitude;
  truth_expert_linear(x, r, true, n, k, [&](int e, int64_t nn, int64_t kk) { return st.weight(e, nn, kk); }, &truth, &magnitude);
  EXPECT_LE(rel_err(oref, truth), 1e-6);
  EXPECT_LE(err_vs_magnitude(of, oref, magnitude), 1e-6);
}

TEST(Moe, PackExpertsRejectsBadStacks) {
  Backends be;
  Rng rng(46);
  TestStack st = make_stack(rng, 3, 8, 64, 4, 32, DType::kBF16, false, true);
  for (ops::Backend* b : {be.fast.get(), be.ref.get()}) {
    SCOPED_TRACE(b->name());
    EXPECT_FALSE(b->pack_quantized_experts(st.view(), 0).is_ok());
    st.g_idx[2 * 64 + 5] = 2;  // expert 2: group 2 of 2
    auto bad = b->pack_quantized_experts(st.view(), 3);
    ASSERT_FALSE(bad.is_ok());
    EXPECT_NE(bad.status().message().find("expert 2"), std::string::npos) << bad.status().message();
    st.g_idx[2 * 64 + 5] = 0;
    EXPECT_TRUE(b->pack_quantized_experts(st.view(), 3).is_ok());
    std::vector<float> v = rng.vec(24);
    EXPECT_FALSE(b->pack_dense_experts(view(v, {4, 6})).is_ok());  // rank 2
    EXPECT_FALSE(b->pack_dense_experts(view(v, {0, 4, 6})).is_ok());
    auto ok = b->pack_dense_experts(view(v, {2, 3, 4}));
    ASSERT_TRUE(ok.is_ok());
    EXPECT_EQ((*ok)->experts, 2);
    EXPECT_EQ((*ok)->out, 3);
    EXPECT_EQ((*ok)->in, 4);
  }
}

// An empty batch (T = 0) is a no-op for every op.
TEST(Moe, ZeroTokens) {
  Backends be;
  Rng rng(48);
  TestStack st = make_stack(rng, 4, 8, 64, 4, 32, DType::kBF16, true, false);
  std::vector<float> none(1, 0.f);
  std::vector<int32_t> ids(1, 0), sorted(1, 0), offsets(5, -1);
  for (ops::Backend* b : {be.fast.get(), be.ref.get()}) {
    SCOPED_TRACE(b->name());
    ops::MoeRouteArgs a;
    a.num_experts = 4;
    a.top_k = 2;
    b->moe_route(view(none, {0, 2}), TensorView{ids.data(), DType::kI32, {0, 2}, {}, Device::kCpu}, view(none, {0, 4}), a);
    b->moe_dispatch(sorted.data(), offsets.data(), nullptr, ids.data(), nullptr, 0, 2, 4);
    EXPECT_EQ(offsets, std::vector<int32_t>(5, 0));
    auto w = b->pack_quantized_experts(st.view(), 4);
    ASSERT_TRUE(w.is_ok());
    ops::ExpertRows rows;
    rows.top_k = 2;
    rows.num_experts = 4;
    rows.sorted_pairs = sorted.data();
    rows.expert_offsets = offsets.data();
    rows.x_by_token = true;
    b->expert_linear(view(none, {0, 8}), view(none, {0, 64}), **w, rows);
    b->moe_combine(view(none, {0, 8}), view(none, {0, 8}), view(none, {0, 2}), nullptr, nullptr);
  }
}

// ---- moe_combine ----------------------------------------------------------------------------------

TEST(Moe, CombineExact) {
  NB_SEED_TRACE();
  Backends be;
  // T = 2, top_k = 2, H = 3; binary fractions, so every F32 result is exact.
  std::vector<float> y = {1, 2, 3, 4, 5, 6, -1, 0.5f, 8, 2, 2, 2};  // [P = 4, 3]
  std::vector<float> w = {0.5f, 0.25f, 0.75f, 0.125f};
  std::vector<float> shared = {10, 20, 30, -4, -8, 16};
  std::vector<float> gate = {0.f, 1e30f};  // sigmoid 0.5 and 1
  const std::vector<float> routed = {0.5f * 1 + 0.25f * 4, 0.5f * 2 + 0.25f * 5, 0.5f * 3 + 0.25f * 6,
                                     0.75f * -1 + 0.125f * 2, 0.75f * 0.5f + 0.125f * 2, 0.75f * 8 + 0.125f * 2};
  for (ops::Backend* b : {be.ref.get(), be.fast.get()}) {
    SCOPED_TRACE(b->name());
    std::vector<float> out(6);
    b->moe_combine(view(out, {2, 3}), view(y, {4, 3}), view(w, {2, 2}), nullptr, nullptr);
    EXPECT_EQ(out, routed);
    const TensorView sv = view(shared, {2, 3}), gv = view(gate, {2, 1});
    b->moe_combine(view(out, {2, 3}), view(y, {4, 3}), view(w, {2, 2}), &sv, nullptr);
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(out[i], routed[i] + shared[i]) << i;
    b->moe_combine(view(out, {2, 3}), view(y, {4, 3}), view(w, {2, 2}), &sv, &gv);
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(out[i], routed[i] + (i < 3 ? 0.5f : 1.f) * shared[i]) << i;
  }
}

TEST(Moe, CombineSweepFastVsReference) {
  NB_SEED_TRACE();
  Backends be;
  uint64_t salt = 600;
  int i = 0;
  for (int top_k : kTopK)
    for (int64_t tokens : kTokens) {
      const int64_t hidden = std::array<int64_t, 4>{1, 7, 64, 203}[static_cast<size_t>(i % 4)];
      const int with = i % 3;  // 0: routed only, 1: + shared, 2: + sigmoid(gate) * shared
      const bool strided_io = i % 2 == 1;
      ++i;
      SCOPED_TRACE(::testing::Message() << "top_k " << top_k << " T " << tokens << " H " << hidden << " shared " << with
                                        << (strided_io ? " strided" : ""));
      Rng rng(salt++);
      const int64_t pairs = tokens * top_k, ld = strided_io ? hidden + 3 : hidden;
      std::vector<float> y = rng.vec(static_cast<size_t>(pairs * ld)), w = rng.vec(static_cast<size_t>(pairs));
      std::vector<float> sh = rng.vec(static_cast<size_t>(tokens * ld)), gwide = rng.vec(static_cast<size_t>(tokens * 5));
      const TensorView yv = strided(y, pairs, hidden, ld), sv = strided(sh, tokens, hidden, ld);
      const TensorView gv = strided(gwide, tokens, 1, 5, 2);  // one column of a wider buffer
      std::vector<float> of(static_cast<size_t>(tokens * ld)), oref = of;
      poison(of);
      poison(oref);
      const TensorView* s = with ? &sv : nullptr;
      const TensorView* g = with == 2 ? &gv : nullptr;
      be.ref->moe_combine(strided(oref, tokens, hidden, ld), yv, view(w, {tokens, top_k}), s, g);
      be.fast->moe_combine(strided(of, tokens, hidden, ld), yv, view(w, {tokens, top_k}), s, g);
      std::vector<float> fo, ro;
      std::vector<double> truth, magnitude;
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t h = 0; h < hidden; ++h) {
          fo.push_back(of[static_cast<size_t>(t * ld + h)]);
          ro.push_back(oref[static_cast<size_t>(t * ld + h)]);
          double acc = 0, mag = 0;
          for (int j = 0; j < top_k; ++j) {
            const double v = static_cast<double>(w[static_cast<size_t>(t * top_k + j)]) * y[static_cast<size_t>((t * top_k + j) * ld + h)];
            acc += v;
            mag += std::abs(v);
          }
          const double gate = with == 2 ? sigmoid_d(gwide[static_cast<size_t>(t * 5 + 2)]) : 1.0;
          if (with) {
            acc += gate * sh[static_cast<size_t>(t * ld + h)];
            mag += std::abs(gate * sh[static_cast<size_t>(t * ld + h)]);
          }
          truth.push_back(acc);
          magnitude.push_back(mag);
        }
      EXPECT_EQ(std::memcmp(fo.data(), ro.data(), fo.size() * 4), 0) << "fast vs reference must be bit-identical";
      std::vector<float> truth_f(truth.begin(), truth.end());
      EXPECT_LE(err_vs_magnitude(ro, truth_f, magnitude), 1e-6) << "reference vs double truth";
    }
}

}  // namespace
}  // namespace nb::opstest
