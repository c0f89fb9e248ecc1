// kv_store, paged attention (decode, chunked prefill, prefill; GQA; sliding window; v_head_dim !=
// head_dim) and grouped LoRA shrink/expand on the CUDA backend against the CPU reference.
// Tolerances: caches are copies (exact); attention and LoRA 1e-2. Method: cuda_ops_test.cpp.
// The sweep of the flash attention kernels (decode/prefill, splits, graphs): cuda_paged_attention_test.cpp.
#include "cuda_fixture.h"

namespace nb::cuda_test {
namespace {

struct AttnCase {
  int heads, kv_heads, d, dv, window;
};

TEST_F(CudaOps, KvStoreAndPagedAttention) {
  const int bs = 16, seqs = 3;
  const std::vector<int> ctx = {1, 37, 70}, ql = {1, 5, 70};
  const int max_blocks = 5, phys_blocks = 18;
  for (const AttnCase& c : {AttnCase{8, 2, 64, 64, 0}, AttnCase{4, 4, 128, 128, 20}, AttnCase{6, 2, 96, 64, 0},
                            AttnCase{8, 1, 64, 64, 33}}) {
    // Block tables: a random assignment of distinct physical blocks.
    std::vector<int32_t> perm(phys_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng_);
    std::vector<int32_t> tables(seqs * max_blocks), qstart = {0}, slots;
    for (int i = 0; i < seqs * max_blocks; ++i) tables[static_cast<size_t>(i)] = perm[static_cast<size_t>(i)];
    for (int s = 0; s < seqs; ++s) {
      qstart.push_back(qstart.back() + ql[static_cast<size_t>(s)]);
      for (int j = 0; j < ctx[static_cast<size_t>(s)]; ++j)
        slots.push_back(tables[static_cast<size_t>(s * max_blocks + j / bs)] * bs + j % bs);
    }
    slots.push_back(-1);  // a padding row: stored nowhere
    const int64_t rows = static_cast<int64_t>(slots.size()), cache = phys_blocks * bs;
    std::vector<float> k = rnd(static_cast<size_t>(rows * c.kv_heads * c.d)), v = rnd(static_cast<size_t>(rows * c.kv_heads * c.dv));
    DeviceTensor gk = up(k, {rows, c.kv_heads, c.d}), gv = up(v, {rows, c.kv_heads, c.dv}), gslots = up_i32(slots);
    std::vector<float> kc0 = rnd(static_cast<size_t>(cache * c.kv_heads * c.d)), vc0 = rnd(static_cast<size_t>(cache * c.kv_heads * c.dv));
    DeviceTensor gkc = up(kc0, {cache, c.kv_heads, c.d}), gvc = up(vc0, {cache, c.kv_heads, c.dv});
    gpu_->kv_store(gkc.view(), gvc.view(), gk.view(), gv.view(), gslots.buffer.as<int32_t>());
    std::vector<float> kc = kc0, vc = vc0;
    cpu_->kv_store(host(kc, {cache, c.kv_heads, c.d}), host(vc, {cache, c.kv_heads, c.dv}), host(k, {rows, c.kv_heads, c.d}),
                   host(v, {rows, c.kv_heads, c.dv}), slots.data());
    EXPECT_EQ(rel_err(down(gkc.view()), kc), 0.0) << SEED_INFO;
    EXPECT_EQ(rel_err(down(gvc.view()), vc), 0.0) << SEED_INFO;

    const int64_t t = qstart.back();
    std::vector<float> q = rnd(static_cast<size_t>(t * c.heads * c.d), 2.f);
    DeviceTensor gq = up(q, {t, c.heads, c.d}), gqs = up_i32(qstart), gctx = up_i32(std::vector<int32_t>(ctx.begin(), ctx.end())),
                 gtab = up_i32(tables);
    ops::AttentionArgs a;
    a.num_seqs = seqs;
    a.max_blocks_per_seq = max_blocks;
    a.block_size = bs;
    a.num_heads = c.heads;
    a.num_kv_heads = c.kv_heads;
    a.head_dim = c.d;
    a.v_head_dim = c.dv;
    a.scale = 1.f / std::sqrt(static_cast<float>(c.d));
    a.sliding_window = c.window;
    a.max_query_len = 70;
    a.max_context_len = 70;
    ops::AttentionArgs ga = a, ha = a;
    ga.query_start = gqs.buffer.as<int32_t>();
    ga.context_lens = gctx.buffer.as<int32_t>();
    ga.block_tables = gtab.buffer.as<int32_t>();
    const std::vector<int32_t> ctx32(ctx.begin(), ctx.end());
    ha.query_start = qstart.data();
    ha.context_lens = ctx32.data();
    ha.block_tables = tables.data();
    DeviceTensor out = ops::make_device_tensor(*gpu_, DType::kBF16, {t, c.heads, c.dv});
    gpu_->attention(out.view(), gq.view(), gkc.view(), gvc.view(), ga);
    std::vector<float> ref(static_cast<size_t>(t * c.heads * c.dv));
    cpu_->attention(host(ref, {t, c.heads, c.dv}), host(q, {t, c.heads, c.d}), host(kc, {cache, c.kv_heads, c.d}),
                    host(vc, {cache, c.kv_heads, c.dv}), ha);
    EXPECT_LT(rel_err(down(out.view()), ref), kTol)
        << "heads " << c.heads << "/" << c.kv_heads << " d " << c.d << "/" << c.dv << " window " << c.window << SEED_INFO;
  }
}

// LoRA factors in one dtype, the same bytes on the host (for the reference) and on the device.
struct Factors {
  std::vector<std::vector<uint8_t>> host;
  std::vector<DeviceTensor> dev;
};

std::vector<uint8_t> to_bytes(const std::vector<float>& v, DType dt) {
  std::vector<uint8_t> b(dtype_bytes(dt, v.size()));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::kF32) reinterpret_cast<float*>(b.data())[i] = v[i];
    else reinterpret_cast<uint16_t*>(b.data())[i] = dt == DType::kBF16 ? float_to_bf16(v[i]) : float_to_fp16(v[i]);
  }
  return b;
}

TEST_F(CudaOps, LoraShrinkExpandGrouped) {
  struct LCase { int64_t t, k, n; int slots; DType dt; };
  for (const LCase& c : {LCase{37, 200, 150, 5, DType::kBF16}, LCase{9, 64, 33, 5, DType::kF32},
                         LCase{100, 96, 80, 40, DType::kBF16}}) {
    std::vector<int> ranks(static_cast<size_t>(c.slots));
    for (size_t s = 0; s < ranks.size(); ++s) ranks[s] = c.slots == 5 ? std::vector<int>{8, 0, 16, 5, 3}[s] : 1 + static_cast<int>(rng_() % 4);
    const int max_rank = *std::max_element(ranks.begin(), ranks.end());
    ops::LoraArgs ga, ca;
    ga.dtype = ca.dtype = c.dt;
    ga.max_rank = ca.max_rank = max_rank;
    Factors f;
    for (int s = 0; s < c.slots; ++s) {
      const int r = ranks[static_cast<size_t>(s)];
      const float scaling = 0.5f + static_cast<float>(s % 3);
      for (int64_t len : {r * c.k, c.n * r}) {
        f.host.push_back(to_bytes(rnd(static_cast<size_t>(std::max<int64_t>(len, 1)), 0.3f), c.dt));
        f.dev.push_back(ops::upload_tensor(*gpu_, TensorView{f.host.back().data(), DType::kU8,
                                                             {static_cast<int64_t>(f.host.back().size())}, {}, Device::kCpu}));
      }
      const size_t i = f.host.size() - 2;
      ca.slots.push_back({f.host[i].data(), f.host[i + 1].data(), r, scaling});
      ga.slots.push_back({f.dev[i].buffer.data(), f.dev[i + 1].buffer.data(), r, scaling});
    }
    // Rows: -1, a valid slot, or (GPU only) an index past the slots, which means "none" as -1 does.
    std::vector<int32_t> gslot(static_cast<size_t>(c.t)), cslot(static_cast<size_t>(c.t));
    for (size_t m = 0; m < gslot.size(); ++m) {
      const int pick = static_cast<int>(rng_() % static_cast<uint64_t>(c.slots + 2)) - 1;
      gslot[m] = pick == c.slots ? c.slots + 3 : pick;
      cslot[m] = pick == c.slots ? -1 : pick;
    }
    DeviceTensor gs = up_i32(gslot);
    ga.row_slot = gs.buffer.as<int32_t>();
    ga.host_row_slot = gslot.data();
    ca.row_slot = ca.host_row_slot = cslot.data();

    std::vector<float> x = rnd(static_cast<size_t>(c.t * c.k)), tmp0 = rnd(static_cast<size_t>(c.t * max_rank));
    DeviceTensor gx = up(x, {c.t, c.k}), gtmp = up(tmp0, {c.t, max_rank}, DType::kF32);
    gpu_->lora_shrink(gtmp.view(), gx.view(), ga);
    std::vector<float> tmp = tmp0;
    cpu_->lora_shrink(host(tmp, {c.t, max_rank}), host(x, {c.t, c.k}), ca);
    EXPECT_LT(rel_err(down(gtmp.view()), tmp), 1e-4) << "shrink (F32 accumulation and output)" << SEED_INFO;

    // Expand from the reference's tmp (so the two steps are tested separately).
    std::vector<float> y0 = rnd(static_cast<size_t>(c.t * c.n));
    DeviceTensor gy = up(y0, {c.t, c.n}), gt2 = up(tmp, {c.t, max_rank}, DType::kF32);
    gpu_->lora_expand(gy.view(), gt2.view(), ga);
    std::vector<float> y = y0;
    cpu_->lora_expand(host(y, {c.t, c.n}), host(tmp, {c.t, max_rank}), ca);
    std::vector<float> dy(y.size()), gdy(y.size());
    const std::vector<float> got = down(gy.view());
    for (size_t i = 0; i < y.size(); ++i) {  // compare the LoRA delta, not the large unchanged base
      dy[i] = y[i] - y0[i];
      gdy[i] = got[i] - y0[i];
    }
    EXPECT_LT(rel_err(gdy, dy), kTol) << "expand, " << c.slots << " slots, " << dtype_name(c.dt) << SEED_INFO;
    for (size_t m = 0; m < gslot.size(); ++m) {
      if (cslot[m] >= 0 && ranks[static_cast<size_t>(cslot[m])] > 0) continue;
      for (size_t n = 0; n < static_cast<size_t>(c.n); ++n) {
        const size_t i = m * static_cast<size_t>(c.n) + n;
        ASSERT_EQ(got[i], y0[i]) << "row " << m << " has no adapter and must be untouched" << SEED_INFO;
      }
    }
  }
}

}  // namespace
}  // namespace nb::cuda_test
