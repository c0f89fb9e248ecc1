// nn::Linear's device slot tables (ops::LoraArgs::device_slots, read by the CUDA decode kernels): on a
// backend with its own memory every slice gets one table, allocated once when the slots are
// reserved, kept equal to the host slots through set_lora/clear_lora (only changed entries are
// uploaded), reallocated only when the slot count grows; on the CPU backend there is none. The
// "device" here is a backend that reports Device::kCuda but keeps its memory on the host and
// computes with the CPU reference, checking at every LoRA call that the table it is handed equals
// the host slots. The forward results are checked against a direct computation.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <set>

#include "backends/cpu/cpu_backend.h"
#include "nn/linear.h"

namespace nb::nn {
namespace {

class TableCheckingBackend : public ops::Backend {
 public:
  explicit TableCheckingBackend(Device device) : device_(device), cpu_(make_cpu_backend(true)) {}
  Device device() const override { return device_; }
  std::string name() const override { return "table-checking"; }
  DType activation_dtype() const override { return DType::kF32; }
  void* alloc(size_t bytes) override {
    ++allocs;
    return cpu_->alloc(bytes);
  }
  void dealloc(void* p) override { cpu_->dealloc(p); }
  void upload(void* dst, const void* src, size_t bytes) override {
    ++uploads;
    cpu_->upload(dst, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) override { cpu_->download(dst, src, bytes); }
  void synchronize() override {}
  Result<std::unique_ptr<ops::PackedWeight>> pack_quantized(const ops::QuantWeightView& w) override {
    return cpu_->pack_quantized(w);
  }
  Result<std::unique_ptr<ops::PackedWeight>> pack_dense(const TensorView& w) override { return cpu_->pack_dense(w); }
  void embedding(TensorView out, TensorView table, const int32_t* ids, int64_t n) override {
    cpu_->embedding(out, table, ids, n);
  }
  void rms_norm(TensorView out, TensorView x, TensorView w, float eps) override { cpu_->rms_norm(out, x, w, eps); }
  void add(TensorView out, TensorView a, TensorView b) override { cpu_->add(out, a, b); }
  void mul(TensorView out, TensorView a, TensorView b) override { cpu_->mul(out, a, b); }
  void silu_mul(TensorView out, TensorView g, TensorView u) override { cpu_->silu_mul(out, g, u); }
  void rope(TensorView x, const int32_t* pos, const ops::RopeArgs& a) override { cpu_->rope(x, pos, a); }
  void linear(TensorView out, TensorView x, const ops::PackedWeight& w, const TensorView* bias) override {
    cpu_->linear(out, x, w, bias);
  }
  void lora_shrink(TensorView tmp, TensorView x, const ops::LoraArgs& a) override {
    check(a);
    cpu_->lora_shrink(tmp, x, a);
  }
  void lora_expand(TensorView y, TensorView tmp, const ops::LoraArgs& a) override {
    check(a);
    cpu_->lora_expand(y, tmp, a);
  }
  void kv_store(TensorView kc, TensorView vc, TensorView k, TensorView v, const int32_t* s) override {
    cpu_->kv_store(kc, vc, k, v, s);
  }
  void attention(TensorView out, TensorView q, TensorView kc, TensorView vc, const ops::AttentionArgs& a) override {
    cpu_->attention(out, q, kc, vc, a);
  }
  void sample(int32_t* ids, TensorView logits, const std::vector<ops::SamplingParams>& p, uint64_t step) override {
    cpu_->sample(ids, logits, p, step);
  }
  void cast(TensorView out, TensorView in) override { cpu_->cast(out, in); }
  Result<std::unique_ptr<ops::PackedWeight>> pack_quantized_experts(const ops::QuantWeightView& w, int64_t e) override {
    return cpu_->pack_quantized_experts(w, e);
  }
  Result<std::unique_ptr<ops::PackedWeight>> pack_dense_experts(const TensorView& w) override {
    return cpu_->pack_dense_experts(w);
  }
  void moe_route(TensorView w, TensorView ids, TensorView logits, const ops::MoeRouteArgs& a) override {
    cpu_->moe_route(w, ids, logits, a);
  }
  void moe_dispatch(int32_t* sorted, int32_t* offsets, int32_t* pair_slots, const int32_t* ids, const int32_t* row_slot,
                    int64_t tokens, int top_k, int experts) override {
    cpu_->moe_dispatch(sorted, offsets, pair_slots, ids, row_slot, tokens, top_k, experts);
  }
  void expert_linear(TensorView out, TensorView x, const ops::PackedWeight& w, const ops::ExpertRows& r) override {
    cpu_->expert_linear(out, x, w, r);
  }
  void moe_combine(TensorView out, TensorView y, TensorView w, const TensorView* sh, const TensorView* g) override {
    cpu_->moe_combine(out, y, w, sh, g);
  }

  int allocs = 0, uploads = 0, checked = 0;
  std::vector<const void*> tables_seen;

 private:
  void check(const ops::LoraArgs& a) {
    ++checked;
    tables_seen.push_back(a.device_slots);
    if (device_ == Device::kCpu) {
      EXPECT_EQ(a.device_slots, nullptr) << "no device table on the CPU backend";
      return;
    }
    ASSERT_NE(a.device_slots, nullptr);
    for (size_t s = 0; s < a.slots.size(); ++s) {
      const ops::LoraFactors& d = a.device_slots[s];
      const ops::LoraFactors& h = a.slots[s];
      EXPECT_TRUE(d.a == h.a && d.b == h.b && d.rank == h.rank && d.scaling == h.scaling) << "slot " << s;
    }
  }
  Device device_;
  std::unique_ptr<ops::Backend> cpu_;
};

constexpr int64_t kIn = 8, kQ = 6, kK = 4, kOut = kQ + kK, kRows = 3;

std::vector<float> random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// One adapter's factors for one slice, in "device" memory (host memory on this backend).
struct Factors {
  std::vector<float> a, b;  // A [rank, in], B [out, rank]
  int rank;
  float scaling;
  ops::LoraFactors view() const { return {a.data(), b.data(), rank, scaling}; }
};
Factors make_factors(int64_t out, int rank, float scaling, uint32_t seed) {
  return {random(static_cast<size_t>(rank * kIn), seed), random(static_cast<size_t>(out * rank), seed + 1), rank,
          scaling};
}

class LinearLoraTable : public ::testing::TestWithParam<Device> {
 protected:
  void SetUp() override {
    be_ = std::make_unique<TableCheckingBackend>(GetParam());
    lin_ = Linear("model.layers.0.self_attn.qk", kIn,
                  {LoraSlice{"model.layers.0.self_attn.q_proj", 0, kQ}, LoraSlice{"model.layers.0.self_attn.k_proj", kQ, kK}});
    w_ = random(static_cast<size_t>(kOut * kIn), 1);
    auto packed = be_->pack_dense(TensorView{w_.data(), DType::kF32, {kOut, kIn}, {}, Device::kCpu});
    ASSERT_TRUE(packed.is_ok());
    ASSERT_TRUE(lin_.set_weight(std::move(*packed), ops::DeviceBuffer(), DType::kF32).is_ok());
    x_ = random(static_cast<size_t>(kRows * kIn), 2);
  }
  // out = x W^T + each row's adapter (slot -> per-slice factors), computed directly.
  std::vector<float> expected(const std::vector<int32_t>& row_slot,
                              const std::vector<std::vector<const Factors*>>& slots) const {
    std::vector<float> out(static_cast<size_t>(kRows * kOut));
    for (int64_t m = 0; m < kRows; ++m) {
      for (int64_t n = 0; n < kOut; ++n) {
        double s = 0;
        for (int64_t k = 0; k < kIn; ++k) s += double{x_[m * kIn + k]} * w_[n * kIn + k];
        const int slot = row_slot[static_cast<size_t>(m)];
        const size_t slice = n < kQ ? 0 : 1;
        const int64_t col = n < kQ ? n : n - kQ;
        const Factors* f = slot >= 0 ? slots[static_cast<size_t>(slot)][slice] : nullptr;
        if (f) {
          double lora = 0;
          for (int r = 0; r < f->rank; ++r) {
            double ax = 0;
            for (int64_t k = 0; k < kIn; ++k) ax += double{f->a[r * kIn + k]} * x_[m * kIn + k];
            lora += double{f->b[col * f->rank + r]} * ax;
          }
          s += f->scaling * lora;
        }
        out[static_cast<size_t>(m * kOut + n)] = static_cast<float>(s);
      }
    }
    return out;
  }
  std::vector<float> forward(std::vector<int32_t> row_slot) {
    std::vector<float> out(static_cast<size_t>(kRows * kOut)), scratch(static_cast<size_t>(kRows * 64));
    BatchContext ctx;
    ctx.backend = be_.get();
    ctx.num_tokens = kRows;
    ctx.row_slot = ctx.host_row_slot = row_slot.data();
    ctx.lora_scratch = TensorView{scratch.data(), DType::kF32, {kRows, 64}, {}, Device::kCpu};
    lin_.forward(ctx, TensorView{out.data(), DType::kF32, {kRows, kOut}, {}, Device::kCpu},
                 TensorView{x_.data(), DType::kF32, {kRows, kIn}, {}, Device::kCpu});
    return out;
  }
  void expect_near(const std::vector<float>& got, const std::vector<float>& want, const char* what) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-4) << what << " element " << i;
  }

  std::unique_ptr<TableCheckingBackend> be_;
  Linear lin_;
  std::vector<float> w_, x_;
};

TEST_P(LinearLoraTable, FollowsSetAndClearWithFixedAddress) {
  const bool device = GetParam() != Device::kCpu;
  const int allocs0 = be_->allocs, uploads0 = be_->uploads;
  lin_.reserve_lora_slots(3, be_.get());
  EXPECT_EQ(be_->allocs - allocs0, device ? 2 : 0) << "one table per slice";
  EXPECT_EQ(be_->uploads - uploads0, device ? 2 : 0);
  lin_.reserve_lora_slots(3);  // same size: nothing
  lin_.reserve_lora_slots(2);
  EXPECT_EQ(be_->allocs - allocs0, device ? 2 : 0);

  Factors q1 = make_factors(kQ, 4, 0.5f, 10), k1 = make_factors(kK, 2, 2.f, 20), q2 = make_factors(kQ, 3, 1.5f, 30);
  int uploads = be_->uploads;
  lin_.set_lora(1, 0, q1.view(), DType::kF32);
  lin_.set_lora(1, 1, k1.view(), DType::kF32);
  lin_.set_lora(2, 0, q2.view(), DType::kF32);
  EXPECT_EQ(be_->uploads - uploads, device ? 3 : 0) << "one entry per change";
  uploads = be_->uploads;
  lin_.clear_lora(0);  // already empty
  EXPECT_EQ(be_->uploads, uploads);

  expect_near(forward({1, -1, 2}), expected({1, -1, 2}, {{}, {&q1, &k1}, {&q2, nullptr}}), "slots 1 and 2");
  EXPECT_GT(be_->checked, 0);
  // Swap the adapter of slot 1 (q only now) and move a row: the same tables, new contents.
  Factors q3 = make_factors(kQ, 5, 0.25f, 40);
  lin_.clear_lora(1);
  lin_.set_lora(1, 0, q3.view(), DType::kF32);
  expect_near(forward({2, 1, 1}), expected({2, 1, 1}, {{}, {&q3, nullptr}, {&q2, nullptr}}), "after the swap");
  EXPECT_EQ(be_->allocs - allocs0, device ? 2 : 0) << "no reallocation while adapters come and go";
  const std::set<const void*> tables(be_->tables_seen.begin(), be_->tables_seen.end());
  EXPECT_EQ(tables.size(), device ? 2u : 1u) << "one fixed address per slice (none on the CPU)";

  // Growing the slot count reallocates and re-uploads every entry.
  lin_.reserve_lora_slots(5);
  EXPECT_EQ(be_->allocs - allocs0, device ? 4 : 0);
  Factors k4 = make_factors(kK, 8, 1.f, 50);
  lin_.set_lora(4, 1, k4.view(), DType::kF32);
  expect_near(forward({4, 2, -1}), expected({4, 2, -1}, {{}, {&q3, nullptr}, {&q2, nullptr}, {}, {nullptr, &k4}}),
              "after growing");
}

INSTANTIATE_TEST_SUITE_P(Backends, LinearLoraTable, ::testing::Values(Device::kCuda, Device::kCpu),
                         [](const ::testing::TestParamInfo<Device>& i) {
                           return std::string(i.param == Device::kCpu ? "cpu" : "device");
                         });

}  // namespace
}  // namespace nb::nn
