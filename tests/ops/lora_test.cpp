// LoRA shrink/expand with several adapters of different ranks and rows without an adapter in one
// batch: the reference against a double-precision computation written here, the fast path
// (grouped by slot) against the reference. Tolerances as in linear_test (magnitude-normalised 1e-6
// for fast vs reference; 1e-6 of the norm for reference vs truth).
#include "ops_test_util.h"

namespace nb::opstest {
namespace {

struct LoraCase {
  int64_t m, k, n;
  DType dtype;
  std::vector<int> ranks;  // per slot; 0 = slot unused
  bool shuffle_rows;       // rows of one adapter scattered through the batch
};

struct LoraSetup {
  std::vector<int32_t> slot_of;                 // [M]
  std::vector<std::vector<float>> a, b;         // per slot: A [rank, K], B [N, rank], representable in dtype
  std::vector<std::vector<uint8_t>> a_raw, b_raw;
  ops::LoraArgs args;
};

LoraSetup make_setup(Rng& rng, const LoraCase& c) {
  LoraSetup s;
  const size_t slots = c.ranks.size();
  s.a.resize(slots), s.b.resize(slots), s.a_raw.resize(slots), s.b_raw.resize(slots);
  s.args.dtype = c.dtype;
  s.args.slots.resize(slots);
  for (size_t i = 0; i < slots; ++i) {
    const int r = c.ranks[i];
    s.args.max_rank = std::max(s.args.max_rank, r);
    if (r == 0) continue;
    s.a[i] = rand_in(rng, static_cast<size_t>(r * c.k), c.dtype);
    s.b[i] = rand_in(rng, static_cast<size_t>(c.n * r), c.dtype);
    s.a_raw[i] = encode(s.a[i], c.dtype);
    s.b_raw[i] = encode(s.b[i], c.dtype);
    s.args.slots[i] = ops::LoraFactors{s.a_raw[i].data(), s.b_raw[i].data(), r, rng.uniform(0.25f, 2.f)};
  }
  // Runs of rows per adapter (like sequences), or scattered; some rows without adapter (-1) and
  // some naming a slot whose rank is 0.
  for (int64_t m = 0; m < c.m; ++m) {
    const int64_t run = c.shuffle_rows ? m : m / std::max<int64_t>(1, c.m / 4);
    int32_t slot = static_cast<int32_t>(run % static_cast<int64_t>(slots + 1)) - 1;
    if (c.shuffle_rows) slot = rng.randint(-1, static_cast<int>(slots) - 1);
    s.slot_of.push_back(slot);
  }
  s.args.host_row_slot = s.slot_of.data();
  s.args.row_slot = s.slot_of.data();
  return s;
}

TEST(Lora, ShrinkExpandMixedAdapters) {
  NB_SEED_TRACE();
  Backends be;
  const std::vector<LoraCase> cases = {
      {1, 64, 17, DType::kF32, {8}, false},
      {5, 130, 129, DType::kBF16, {4, 16, 0, 8}, true},
      {33, 257, 64, DType::kF16, {16, 1, 7}, false},
      {64, 1000, 3, DType::kF32, {2, 32}, true},
      {7, 7, 1, DType::kBF16, {3, 5}, true},
      {64, 257, 130, DType::kBF16, {16, 8, 64}, false},
  };
  uint64_t salt = 1;
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << "M " << c.m << " K " << c.k << " N " << c.n << " " << dtype_name(c.dtype));
    Rng rng(salt++);
    LoraSetup s = make_setup(rng, c);
    const int64_t max_rank = s.args.max_rank, ld_tmp = max_rank + 3, ld_y = c.n + 4;
    const std::vector<float> x = rng.vec(static_cast<size_t>(c.m * c.k)), y0 = rng.vec(static_cast<size_t>(c.m * ld_y));
    std::vector<float> xv = x;
    // Truth in double: tmp = x A^T, y = y0 + (tmp B^T) * scaling, for rows with an adapter.
    std::vector<double> t_truth(static_cast<size_t>(c.m * max_rank)), t_mag(t_truth.size()), y_truth(static_cast<size_t>(c.m * c.n)), y_mag(y_truth.size());
    for (int64_t m = 0; m < c.m; ++m) {
      const int32_t sl = s.slot_of[static_cast<size_t>(m)];
      const int r = sl < 0 ? 0 : c.ranks[static_cast<size_t>(sl)];
      for (int j = 0; j < r; ++j) {
        double acc = 0, mag = 0;
        for (int64_t k = 0; k < c.k; ++k) {
          const double t = static_cast<double>(x[static_cast<size_t>(m * c.k + k)]) * s.a[static_cast<size_t>(sl)][static_cast<size_t>(j * c.k + k)];
          acc += t;
          mag += std::abs(t);
        }
        t_truth[static_cast<size_t>(m * max_rank + j)] = acc;
        t_mag[static_cast<size_t>(m * max_rank + j)] = mag;
      }
      for (int64_t n = 0; n < c.n; ++n) {
        double acc = 0, mag = 0;
        for (int j = 0; j < r; ++j) {
          const double t = t_truth[static_cast<size_t>(m * max_rank + j)] * s.b[static_cast<size_t>(sl)][static_cast<size_t>(n * r + j)];
          acc += t;
          mag += std::abs(t);
        }
        const float scaling = r ? s.args.slots[static_cast<size_t>(sl)].scaling : 0.f;
        y_truth[static_cast<size_t>(m * c.n + n)] = y0[static_cast<size_t>(m * ld_y + n)] + acc * scaling;
        y_mag[static_cast<size_t>(m * c.n + n)] = std::abs(y0[static_cast<size_t>(m * ld_y + n)]) + mag * scaling;
      }
    }
    std::vector<float> tmp_out[2], y_out[2];
    ops::Backend* backends[2] = {be.ref.get(), be.fast.get()};
    for (int i = 0; i < 2; ++i) {
      std::vector<float> tmp(static_cast<size_t>(c.m * ld_tmp)), y = y0;
      poison(tmp);
      backends[i]->lora_shrink(strided(tmp, c.m, max_rank, ld_tmp), view(xv, {c.m, c.k}), s.args);
      // Only the first `rank` columns of rows with an adapter are defined; keep them.
      tmp_out[i].assign(static_cast<size_t>(c.m * max_rank), 0.f);
      for (int64_t m = 0; m < c.m; ++m) {
        const int32_t sl = s.slot_of[static_cast<size_t>(m)];
        const int r = sl < 0 ? 0 : c.ranks[static_cast<size_t>(sl)];
        for (int j = 0; j < r; ++j) tmp_out[i][static_cast<size_t>(m * max_rank + j)] = tmp[static_cast<size_t>(m * ld_tmp + j)];
      }
      backends[i]->lora_expand(strided(y, c.m, c.n, ld_y), strided(tmp, c.m, max_rank, ld_tmp), s.args);
      y_out[i].resize(static_cast<size_t>(c.m * c.n));
      for (int64_t m = 0; m < c.m; ++m)
        for (int64_t n = 0; n < c.n; ++n) y_out[i][static_cast<size_t>(m * c.n + n)] = y[static_cast<size_t>(m * ld_y + n)];
      // Padding columns of y (past N) must be untouched.
      for (int64_t m = 0; m < c.m; ++m)
        for (int64_t n = c.n; n < ld_y; ++n) ASSERT_EQ(y[static_cast<size_t>(m * ld_y + n)], y0[static_cast<size_t>(m * ld_y + n)]);
    }
    EXPECT_LE(rel_err(tmp_out[0], t_truth), 1e-6) << "shrink: reference vs truth";
    EXPECT_LE(rel_err(y_out[0], y_truth), 1e-6) << "expand: reference vs truth";
    EXPECT_LE(err_vs_magnitude(tmp_out[1], tmp_out[0], t_mag), 1e-6) << "shrink: fast vs reference";
    EXPECT_LE(err_vs_magnitude(y_out[1], y_out[0], y_mag), 1e-6) << "expand: fast vs reference";
  }
}

}  // namespace
}  // namespace nb::opstest
