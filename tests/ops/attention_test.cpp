// kv_store + paged attention: several sequences of different lengths in one batch (decode, whole
// prefill, chunked prefill), GQA ratios 1/2/4, block sizes 1 and 16 with shuffled block tables,
// head_dim != v_head_dim, sliding window, F32/BF16/F16 caches. Truth: a naive per-sequence
// softmax(q k^T * scale) v in double over contiguous K/V written here. Tolerances: reference vs
// truth 1e-6, fast vs reference 1e-5 (normalised by ||reference||; outputs are convex combinations of
// values, so there is no cancellation).
#include <numeric>

#include "ops_test_util.h"

namespace nb::opstest {
namespace {

struct AttnCase {
  std::vector<std::pair<int, int>> seqs;  // (query length, context length)
  int heads, kv_heads, d, dv, block_size, window;
  DType cache_dtype;
};

struct Sequence {
  int q_len, ctx;
  std::vector<float> k, v;  // [ctx, kv_heads, d], [ctx, kv_heads, dv]
};

void run_case(Backends& be, const AttnCase& c, uint64_t salt) {
  Rng rng(salt);
  const int kvh = c.kv_heads, bs = c.block_size;
  std::vector<Sequence> seqs;
  int max_blocks = 0, total_blocks = 0, rows = 0, total_ctx = 0;
  for (auto [ql, ctx] : c.seqs) {
    seqs.push_back({ql, ctx, rand_in(rng, static_cast<size_t>(ctx * kvh * c.d), c.cache_dtype),
                    rand_in(rng, static_cast<size_t>(ctx * kvh * c.dv), c.cache_dtype)});
    max_blocks = std::max(max_blocks, (ctx + bs - 1) / bs);
    total_blocks += (ctx + bs - 1) / bs;
    rows += ql;
    total_ctx += ctx;
  }
  const int num_blocks = total_blocks + 3;  // a few spare physical blocks stay unwritten (NaN)
  std::vector<int32_t> physical(static_cast<size_t>(num_blocks));
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng.gen());
  std::vector<int32_t> block_tables(static_cast<size_t>(c.seqs.size() * max_blocks), -1), query_start{0}, context_lens;
  size_t next = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int b = 0; b < (seqs[s].ctx + bs - 1) / bs; ++b) block_tables[s * static_cast<size_t>(max_blocks) + static_cast<size_t>(b)] = physical[next++];
    query_start.push_back(query_start.back() + seqs[s].q_len);
    context_lens.push_back(seqs[s].ctx);
  }
  // Every key/value of every sequence goes through kv_store, with the slot the block table implies.
  std::vector<float> k_all, v_all;
  std::vector<int32_t> slot_mapping;
  for (size_t s = 0; s < seqs.size(); ++s) {
    k_all.insert(k_all.end(), seqs[s].k.begin(), seqs[s].k.end());
    v_all.insert(v_all.end(), seqs[s].v.begin(), seqs[s].v.end());
    for (int j = 0; j < seqs[s].ctx; ++j)
      slot_mapping.push_back(block_tables[s * static_cast<size_t>(max_blocks) + static_cast<size_t>(j / bs)] * bs + j % bs);
  }
  const std::vector<float> q = rng.vec(static_cast<size_t>(rows * c.heads * c.d));
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));

  // Truth.
  std::vector<double> truth(static_cast<size_t>(rows * c.heads * c.dv));
  const int group = c.heads / kvh;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const Sequence& sq = seqs[s];
    for (int i = 0; i < sq.q_len; ++i) {
      const int row = query_start[s] + i, pos = sq.ctx - sq.q_len + i;
      const int lo = c.window > 0 ? std::max(0, pos - c.window + 1) : 0;
      for (int h = 0; h < c.heads; ++h) {
        const int kh = h / group;
        std::vector<double> p;
        for (int j = lo; j <= pos; ++j) {
          double dot = 0;
          for (int e = 0; e < c.d; ++e)
            dot += static_cast<double>(q[static_cast<size_t>((row * c.heads + h) * c.d + e)]) * sq.k[static_cast<size_t>((j * kvh + kh) * c.d + e)];
          p.push_back(dot * scale);
        }
        const double mx = *std::max_element(p.begin(), p.end());
        double sum = 0;
        for (double& e : p) sum += (e = std::exp(e - mx));
        for (int e = 0; e < c.dv; ++e) {
          double acc = 0;
          for (int j = lo; j <= pos; ++j) acc += p[static_cast<size_t>(j - lo)] / sum * sq.v[static_cast<size_t>((j * kvh + kh) * c.dv + e)];
          truth[static_cast<size_t>((row * c.heads + h) * c.dv + e)] = acc;
        }
      }
    }
  }

  ops::AttentionArgs args;
  args.num_seqs = static_cast<int>(seqs.size());
  args.query_start = query_start.data();
  args.context_lens = context_lens.data();
  args.block_tables = block_tables.data();
  args.max_blocks_per_seq = max_blocks;
  args.block_size = bs;
  args.num_heads = c.heads;
  args.num_kv_heads = kvh;
  args.head_dim = c.d;
  args.v_head_dim = c.dv;
  args.scale = scale;
  args.sliding_window = c.window;
  std::vector<float> outs[2];
  ops::Backend* backends[2] = {be.ref.get(), be.fast.get()};
  for (int b = 0; b < 2; ++b) {
    const int64_t slots = static_cast<int64_t>(num_blocks) * bs;
    std::vector<float> kc_f(static_cast<size_t>(slots * kvh * c.d)), vc_f(static_cast<size_t>(slots * kvh * c.dv));
    poison(kc_f);
    poison(vc_f);
    std::vector<uint8_t> kc = encode(kc_f, c.cache_dtype), vc = encode(vc_f, c.cache_dtype);
    const TensorView kcv = view(kc, c.cache_dtype, {slots, kvh, c.d}), vcv = view(vc, c.cache_dtype, {slots, kvh, c.dv});
    backends[b]->kv_store(kcv, vcv, view(k_all, {total_ctx, kvh, c.d}), view(v_all, {total_ctx, kvh, c.dv}), slot_mapping.data());
    int wrong = 0;  // the cache must hold exactly the stored rows
    for (int t = 0; t < total_ctx; ++t)
      for (int e = 0; e < kvh * c.d; ++e)
        wrong += load_as_float(kc.data(), c.cache_dtype, static_cast<size_t>(slot_mapping[static_cast<size_t>(t)]) * static_cast<size_t>(kvh * c.d) + static_cast<size_t>(e)) !=
                 k_all[static_cast<size_t>(t * kvh * c.d + e)];
    EXPECT_EQ(wrong, 0) << "kv_store " << backends[b]->name();
    std::vector<float> q_copy = q;
    outs[b].resize(static_cast<size_t>(rows * c.heads * c.dv));
    poison(outs[b]);
    backends[b]->attention(view(outs[b], {rows, c.heads, c.dv}), view(q_copy, {rows, c.heads, c.d}), kcv, vcv, args);
  }
  EXPECT_LE(rel_err(outs[0], truth), 1e-6) << "reference vs truth";
  EXPECT_LE(rel_err(outs[1], outs[0]), 1e-5) << "fast vs reference";
}

TEST(Attention, PagedBatchFastVsReferenceVsTruth) {
  NB_SEED_TRACE();
  Backends be;
  const std::vector<std::pair<int, int>> mix = {{1, 37}, {19, 19}, {5, 23}, {1, 1}, {3, 70}};
  const std::vector<AttnCase> cases = {
      {mix, 4, 4, 64, 64, 16, 0, DType::kF32},     // MHA, block 16
      {mix, 4, 2, 64, 64, 1, 0, DType::kF32},      // GQA 2, block 1
      {mix, 8, 2, 24, 16, 16, 0, DType::kF32},     // GQA 4, head_dim != v_head_dim
      {mix, 8, 2, 13, 70, 1, 7, DType::kF32},      // odd dims, sliding window
      {mix, 4, 1, 64, 64, 16, 5, DType::kF32},     // MQA + window
      {mix, 4, 2, 32, 32, 16, 0, DType::kBF16},    // bf16 cache
      {mix, 8, 4, 40, 24, 1, 9, DType::kF16},      // fp16 cache
      {{{1, 300}, {64, 64}}, 32, 8, 64, 64, 16, 0, DType::kF32},  // Llama-3.2-1B heads
  };
  uint64_t salt = 1;
  for (const auto& c : cases) {
    SCOPED_TRACE(::testing::Message() << "heads " << c.heads << "/" << c.kv_heads << " d " << c.d << "/" << c.dv << " block "
                                      << c.block_size << " window " << c.window << " " << dtype_name(c.cache_dtype));
    run_case(be, c, salt++);
  }
}

}  // namespace
}  // namespace nb::opstest
