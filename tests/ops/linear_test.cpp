// linear: the reference against a double-precision dequantize-then-matmul built here from codes this
// test packs itself (tolerance 1e-6 of ||truth||: the reference only rounds the result to F32), and
// the fast kernels against the reference over a sweep of shapes and schemes (tolerance 1e-6 of
// || |x| @ |W|^T ||: F32 accumulation in another order; a single wrong weight shows at ~1/K).
#include <numeric>

#include "backends/cpu/packed.h"
#include "ops/quant_weight.h"
#include "ops_test_util.h"

namespace nb::opstest {
namespace {

// A canonical quantized weight built by the test: signed codes, scales, zero points, g_idx.
struct TestQuant {
  int64_t out = 0, in = 0, gs = 0, groups = 0;
  int bits = 4;
  DType sdt = DType::kBF16;
  std::vector<int> q, z;         // [out, in], [out, G]
  std::vector<float> s;          // [out, G], representable in sdt
  std::vector<int32_t> g;        // [in]
  std::vector<uint8_t> codes, scales;
  std::vector<int8_t> zeros;
  bool sym = true, act_order = false;

  // Truth: (q - z) * s in double (exact), rounded once to the scale dtype.
  double weight(int64_t n, int64_t k) const {
    const int64_t gi = n * groups + g[static_cast<size_t>(k)];
    return round_to(static_cast<double>(q[static_cast<size_t>(n * in + k)] - z[static_cast<size_t>(gi)]) * s[static_cast<size_t>(gi)], sdt);
  }
  ops::QuantWeightView view() {
    ops::QuantWeightView v;
    v.out = out;
    v.in = in;
    v.bits = bits;
    v.group_size = gs;
    v.num_groups = groups;
    v.codes = codes.data();
    v.scale_dtype = sdt;
    v.scales = scales.data();
    v.zeros = sym ? nullptr : zeros.data();
    v.g_idx = act_order ? g.data() : nullptr;
    return v;
  }
};

// group_size 0 = channel-wise (one group of `in` columns).
TestQuant make_quant(Rng& rng, int64_t out, int64_t in, int bits, int64_t group_size, DType sdt, bool sym, bool act_order) {
  TestQuant w;
  w.out = out, w.in = in, w.bits = bits, w.sdt = sdt, w.sym = sym, w.act_order = act_order;
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
  // act-order: columns scattered over groups by a random permutation, each group still gs wide.
  std::vector<int32_t> perm(static_cast<size_t>(in));
  std::iota(perm.begin(), perm.end(), 0);
  if (act_order) std::shuffle(perm.begin(), perm.end(), rng.gen());
  w.g.resize(static_cast<size_t>(in));
  for (int64_t k = 0; k < in; ++k) w.g[static_cast<size_t>(k)] = static_cast<int32_t>(perm[static_cast<size_t>(k)] / w.gs);
  // Canonical packing: INT4 two's-complement nibbles, low nibble = even column; INT8 one byte each.
  const int64_t row_bytes = bits == 4 ? (in + 1) / 2 : in;
  w.codes.assign(static_cast<size_t>(out * row_bytes), 0);
  for (int64_t n = 0; n < out; ++n) {
    for (int64_t k = 0; k < in; ++k) {
      const int v = w.q[static_cast<size_t>(n * in + k)];
      if (bits == 8) {
        w.codes[static_cast<size_t>(n * row_bytes + k)] = static_cast<uint8_t>(static_cast<int8_t>(v));
      } else {
        w.codes[static_cast<size_t>(n * row_bytes + k / 2)] |= static_cast<uint8_t>((v & 0xF) << (4 * (k & 1)));
      }
    }
  }
  w.scales = encode(w.s, sdt);
  w.zeros.assign(w.z.begin(), w.z.end());
  return w;
}

// x @ W^T (+ bias) in double; with magnitude: |x| @ |W|^T (+ |bias|).
std::vector<double> truth_matmul(const std::vector<float>& x, int64_t m_rows, const TestQuant& w, const std::vector<float>* bias,
                                 bool magnitude = false) {
  std::vector<double> wd(static_cast<size_t>(w.out * w.in));
  for (int64_t n = 0; n < w.out; ++n)
    for (int64_t k = 0; k < w.in; ++k) wd[static_cast<size_t>(n * w.in + k)] = w.weight(n, k);
  std::vector<double> out(static_cast<size_t>(m_rows * w.out));
  for (int64_t m = 0; m < m_rows; ++m)
    for (int64_t n = 0; n < w.out; ++n) {
      double acc = bias ? (*bias)[static_cast<size_t>(n)] : 0.0;
      if (magnitude) acc = std::abs(acc);
      for (int64_t k = 0; k < w.in; ++k) {
        const double t = static_cast<double>(x[static_cast<size_t>(m * w.in + k)]) * wd[static_cast<size_t>(n * w.in + k)];
        acc += magnitude ? std::abs(t) : t;
      }
      out[static_cast<size_t>(m * w.out + n)] = acc;
    }
  return out;
}

// Runs linear on a backend with x and out optionally embedded in wider row-strided buffers; returns
// out as a dense [M, N] vector. The output buffer is poisoned with NaN first.
std::vector<float> run_linear(ops::Backend& b, const ops::PackedWeight& w, const std::vector<float>& x, int64_t m_rows,
                              const TensorView* bias, bool strided_io) {
  const int64_t k = w.in, n = w.out, ldx = strided_io ? k + 3 : k, ldo = strided_io ? n + 5 : n, off = strided_io ? 2 : 0;
  std::vector<float> xb(static_cast<size_t>(m_rows * ldx + off), 7.f), ob(static_cast<size_t>(m_rows * ldo + off));
  for (int64_t m = 0; m < m_rows; ++m) std::copy(x.begin() + m * k, x.begin() + (m + 1) * k, xb.begin() + off + m * ldx);
  poison(ob);
  b.linear(strided(ob, m_rows, n, ldo, off), strided(xb, m_rows, k, ldx, off), w, bias);
  std::vector<float> out(static_cast<size_t>(m_rows * n));
  for (int64_t m = 0; m < m_rows; ++m) std::copy(ob.begin() + off + m * ldo, ob.begin() + off + m * ldo + n, out.begin() + m * n);
  return out;
}

const int64_t kKs[] = {1, 7, 64, 130, 257, 1000};
const int64_t kNs[] = {1, 3, 17, 64, 129};
const int64_t kMs[] = {1, 2, 5, 33, 64};

struct QuantCase {
  int bits;
  DType sdt;
  bool sym, act_order;
  int64_t gs;  // 0 = channel
  int64_t m, n, k;
};

void check_quant_case(Backends& be, const QuantCase& c, uint64_t salt) {
  Rng rng(salt);
  SCOPED_TRACE(::testing::Message() << "INT" << c.bits << " scales " << dtype_name(c.sdt) << (c.sym ? " sym" : " asym")
                                    << (c.act_order ? " g_idx" : "") << " gs " << c.gs << " M " << c.m << " N " << c.n
                                    << " K " << c.k);
  TestQuant tw = make_quant(rng, c.n, c.k, c.bits, c.gs, c.sdt, c.sym, c.act_order);
  const std::vector<float> x = rng.vec(static_cast<size_t>(c.m * c.k));
  std::vector<float> bias = rand_in(rng, static_cast<size_t>(c.n), DType::kBF16);
  std::vector<uint8_t> bias_raw = encode(bias, DType::kBF16);
  const TensorView bias_view = view(bias_raw, DType::kBF16, {c.n});
  const bool with_bias = salt % 2 == 0, strided_io = salt % 3 == 0;
  auto fast_w = be.fast->pack_quantized(tw.view());
  auto ref_w = be.ref->pack_quantized(tw.view());
  ASSERT_TRUE(fast_w.is_ok()) << fast_w.status().to_string();
  ASSERT_TRUE(ref_w.is_ok()) << ref_w.status().to_string();
  const auto truth = truth_matmul(x, c.m, tw, with_bias ? &bias : nullptr);
  const auto ref = run_linear(*be.ref, **ref_w, x, c.m, with_bias ? &bias_view : nullptr, strided_io);
  const auto fast = run_linear(*be.fast, **fast_w, x, c.m, with_bias ? &bias_view : nullptr, strided_io);
  const auto magnitude = truth_matmul(x, c.m, tw, with_bias ? &bias : nullptr, true);
  EXPECT_LE(rel_err(ref, truth), 1e-6) << "reference vs double truth";
  EXPECT_LE(err_vs_magnitude(fast, ref, magnitude), 1e-6) << "fast vs reference";
}

TEST(Linear, QuantizedSweepFastVsReferenceVsTruth) {
  NB_SEED_TRACE();
  Backends be;
  uint64_t salt = 1;
  int i = 0;
  for (int bits : {4, 8})
    for (DType sdt : {DType::kBF16, DType::kF16, DType::kF32})
      for (bool sym : {true, false})
        for (bool act_order : {false, true})
          for (int64_t gs : {32, 64, 128, 0}) {
            for (int j = 0; j < 2; ++j, ++i) {
              QuantCase c{bits, sdt, sym, act_order, gs, kMs[(i * 3 + j) % 5], kNs[(i * 7 + j) % 5], kKs[(i + 3 * j) % 6]};
              check_quant_case(be, c, salt++);
            }
          }
}

// Every K and N for the two INT4 table kernels with the hardest scheme, at GEMV and GEMM sizes.
TEST(Linear, Int4AllShapes) {
  NB_SEED_TRACE();
  Backends be;
  uint64_t salt = 1000;
  for (DType sdt : {DType::kBF16, DType::kF16})
    for (int64_t k : kKs)
      for (int64_t n : kNs)
        for (int64_t m : {int64_t{1}, int64_t{5}}) check_quant_case(be, {4, sdt, false, true, 32, m, n, k}, salt++);
}

// With x = identity rows, out[m][n] = W[n][m]: every dequantized value must equal the truth bit for bit.
TEST(Linear, FastDequantizationIsExact) {
  NB_SEED_TRACE();
  Backends be;
  Rng rng(77);
  for (int bits : {4, 8})
    for (DType sdt : {DType::kBF16, DType::kF16, DType::kF32})
      for (int64_t m_rows : {int64_t{1}, int64_t{4}, int64_t{257}}) {
        SCOPED_TRACE(::testing::Message() << "INT" << bits << " " << dtype_name(sdt) << " M " << m_rows);
        TestQuant tw = make_quant(rng, 19, 257, bits, 64, sdt, false, true);
        auto w = be.fast->pack_quantized(tw.view());
        ASSERT_TRUE(w.is_ok());
        std::vector<float> x(static_cast<size_t>(m_rows * tw.in), 0.f);
        const int64_t first = rng.randint(0, static_cast<int>(tw.in - m_rows));
        for (int64_t m = 0; m < m_rows; ++m) x[static_cast<size_t>(m * tw.in + first + m)] = 1.f;
        const auto out = run_linear(*be.fast, **w, x, m_rows, nullptr, false);
        int bad = 0;
        for (int64_t m = 0; m < m_rows; ++m)
          for (int64_t n = 0; n < tw.out; ++n)
            bad += out[static_cast<size_t>(m * tw.out + n)] != static_cast<float>(tw.weight(n, first + m));
        EXPECT_EQ(bad, 0);
      }
}

// A weight with more distinct (scale, zero) pairs than the fast backend precomputes tables for: its
// INT4 tables are built at run time instead, and must give the same results.
TEST(Linear, Int4RunTimeTables) {
  NB_SEED_TRACE();
  Backends be;
  for (DType sdt : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(dtype_name(sdt));
    Rng rng(sdt == DType::kBF16 ? 61 : 62);
    TestQuant tw = make_quant(rng, 2100, 256, 4, 32, sdt, false, false);  // 16800 groups
    // Every group gets its own pair: consecutive representable scales from 1e-4 up, times 16 zeros.
    const uint16_t first = sdt == DType::kBF16 ? float_to_bf16(1e-4f) : float_to_fp16(1e-4f);
    const size_t steps = sdt == DType::kBF16 ? 1700 : 9000;
    for (size_t i = 0; i < tw.s.size(); ++i) {
      const uint16_t bits = static_cast<uint16_t>(first + i % steps);
      tw.s[i] = sdt == DType::kBF16 ? bf16_to_float(bits) : fp16_to_float(bits);
      tw.z[i] = static_cast<int>((i / steps) % 16) - 8;
    }
    tw.scales = encode(tw.s, sdt);
    tw.zeros.assign(tw.z.begin(), tw.z.end());
    auto fw = be.fast->pack_quantized(tw.view());
    auto rw = be.ref->pack_quantized(tw.view());
    ASSERT_TRUE(fw.is_ok() && rw.is_ok());
    auto* packed = dynamic_cast<const cpu::CpuQuantWeight*>(fw->get());
    ASSERT_NE(packed, nullptr);
    EXPECT_FALSE(packed->has_tables()) << "the weight was meant to exceed the precomputed-table limit";
    for (int64_t m : {int64_t{1}, int64_t{6}}) {
      const std::vector<float> x = rng.vec(static_cast<size_t>(m * tw.in));
      const auto magnitude = truth_matmul(x, m, tw, nullptr, true);
      const auto ref = run_linear(*be.ref, **rw, x, m, nullptr, false);
      EXPECT_LE(rel_err(ref, truth_matmul(x, m, tw, nullptr)), 1e-6);
      EXPECT_LE(err_vs_magnitude(run_linear(*be.fast, **fw, x, m, nullptr, false), ref, magnitude), 1e-6) << "M " << m;
    }
  }
}

TEST(Linear, DenseFastVsReferenceVsTruth) {
  NB_SEED_TRACE();
  Backends be;
  const int64_t ks[] = {1, 7, 257, 1000}, ns[] = {1, 3, 17, 129}, ms[] = {1, 2, 5, 33, 64, 130};
  int i = 0;
  for (DType wdt : {DType::kBF16, DType::kF16, DType::kF32})
    for (DType bdt : {DType::kF32, DType::kBF16, DType::kF16})
      for (int j = 0; j < 4; ++j, ++i) {
        const int64_t k = ks[(i + j) % 4], n = ns[(i * 3 + j) % 4], m = ms[(i * 5 + j) % 6];
        SCOPED_TRACE(::testing::Message() << "W " << dtype_name(wdt) << " bias " << dtype_name(bdt) << " M " << m << " N " << n << " K " << k);
        Rng rng(static_cast<uint64_t>(5000 + i));
        std::vector<float> wv = rand_in(rng, static_cast<size_t>(n * k), wdt), bias = rand_in(rng, static_cast<size_t>(n), bdt);
        std::vector<uint8_t> wraw = encode(wv, wdt), braw = encode(bias, bdt);
        const std::vector<float> x = rng.vec(static_cast<size_t>(m * k));
        const TensorView wview = view(wraw, wdt, {n, k}), bview = view(braw, bdt, {n});
        auto fw = be.fast->pack_dense(wview);
        auto rw = be.ref->pack_dense(wview);
        ASSERT_TRUE(fw.is_ok() && rw.is_ok());
        std::vector<double> truth(static_cast<size_t>(m * n)), magnitude(truth.size());
        for (int64_t r = 0; r < m; ++r)
          for (int64_t c = 0; c < n; ++c) {
            double acc = bias[static_cast<size_t>(c)], mag = std::abs(acc);
            for (int64_t kk = 0; kk < k; ++kk) {
              const double t = static_cast<double>(x[static_cast<size_t>(r * k + kk)]) * wv[static_cast<size_t>(c * k + kk)];
              acc += t;
              mag += std::abs(t);
            }
            truth[static_cast<size_t>(r * n + c)] = acc;
            magnitude[static_cast<size_t>(r * n + c)] = mag;
          }
        const auto ref = run_linear(*be.ref, **rw, x, m, &bview, i % 2 == 0);
        const auto fast = run_linear(*be.fast, **fw, x, m, &bview, i % 2 == 1);
        EXPECT_LE(rel_err(ref, truth), 1e-6);
        EXPECT_LE(err_vs_magnitude(fast, ref, magnitude), 1e-6);
      }
}

TEST(Linear, PackRejectsInconsistentWeights) {
  Backends be;
  Rng rng(9);
  TestQuant tw = make_quant(rng, 8, 64, 4, 32, DType::kBF16, false, true);
  for (auto* b : {be.fast.get(), be.ref.get()}) {
    ops::QuantWeightView v = tw.view();
    v.bits = 3;
    EXPECT_EQ(b->pack_quantized(v).status().code(), ErrorCode::kUnsupported);
    v = tw.view();
    v.g_idx = nullptr;
    v.num_groups = 3;  // 64 / 32 = 2 groups
    EXPECT_EQ(b->pack_quantized(v).status().code(), ErrorCode::kInvalidArgument);
    v = tw.view();
    tw.g[5] = 2;  // group 2 of 2
    auto st = b->pack_quantized(v).status();
    EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(st.message().find("g_idx[5]"), std::string::npos) << st.message();
    tw.g[5] = 0;
    v.scale_dtype = DType::kI32;
    EXPECT_EQ(b->pack_quantized(v).status().code(), ErrorCode::kUnsupported);
    v = tw.view();
    v.codes = nullptr;
    EXPECT_FALSE(b->pack_quantized(v).is_ok());
    std::vector<float> vec = rng.vec(8);
    EXPECT_FALSE(b->pack_dense(view(vec, {8})).is_ok());  // rank 1
    EXPECT_TRUE(b->pack_dense(view(vec, {2, 4})).is_ok());
  }
}

}  // namespace
}  // namespace nb::opstest
