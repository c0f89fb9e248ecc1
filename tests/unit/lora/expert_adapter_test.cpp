// LoRA on MoE experts (formats.md §6.5): PEFT's fused 3-D parameter layout (target_parameters) in
// both orientations (PEFT >= 0.19.1 and older), its ".base_layer" nesting, the per-expert split into
// gate/up/down Linears, router LoRA through a 2-D target parameter, and the refusals (dense model,
// wrong expert count, layout that contradicts peft_version, the same expert twice).
//
// The oracle for the factor mapping is PEFT's own ParamWrapper.get_delta_weight, restated here from
// its source: A3 = lora_A.reshape(E, r, a), B3 = lora_B.reshape(b, r, E);
//   swapped (>= 0.19.1):  ΔW_e[o][k] = sum_j B3[o][j][e] * A3[e][j][k]   (a = in, b = out)
//   older:                ΔW_e[o][k] = sum_j B3[k][j][e] * A3[e][j][o]   (a = out, b = in)
// and the loaded per-expert factors must give ΔW_e = B_e @ A_e exactly (in F32).
#include <gtest/gtest.h>

#include "lora/adapter.h"
#include "lora_test_util.h"

namespace nb::lora_test {
namespace {

constexpr int64_t kE = 3, kI = 10;  // 3 experts of width 10 in layer 1; hidden 16
const std::string kExperts = "model.layers.1.mlp.experts";

std::vector<BaseModule> moe_base() {
  std::vector<BaseModule> base = fake_base();
  for (int64_t e = 0; e < kE; ++e) {
    const std::string p = kExperts + "." + std::to_string(e) + ".";
    base.push_back(BaseModule::make(p + "gate_proj", BaseModule::Kind::kLinear, kI, kHidden, 1));
    base.push_back(BaseModule::make(p + "up_proj", BaseModule::Kind::kLinear, kI, kHidden, 1));
    base.push_back(BaseModule::make(p + "down_proj", BaseModule::Kind::kLinear, kHidden, kI, 1));
  }
  base.push_back(BaseModule::make("model.layers.1.mlp.gate", BaseModule::Kind::kLinear, kE, kHidden, 1));
  auto param = [&](const char* name, int index, std::vector<ExpertSlice> slices, int64_t in) {
    BaseModule m;
    m.kind = BaseModule::Kind::kExpertParam;
    m.name = kExperts + "." + name;
    for (const auto& s : slices) m.out += s.rows;
    m.in = in;
    m.layer = 1;
    m.num_experts = kE;
    m.experts_module = kExperts;
    m.param_index = index;
    m.expert_prefix = kExperts + ".";
    m.slices = std::move(slices);
    base.push_back(m);
  };
  param("gate_up_proj", 0, {{"gate_proj", kI}, {"up_proj", kI}}, kHidden);
  param("down_proj", 1, {{"down_proj", kHidden}}, kI);
  return base;
}

std::string config(const std::string& version, const std::string& params, const std::string& modules = "[]") {
  std::string v = version.empty() ? "" : "\"peft_version\": \"" + version + "\", ";
  return "{\"peft_type\": \"LORA\", " + v + "\"r\": 2, \"lora_alpha\": 6, \"target_modules\": " + modules +
         ", \"target_parameters\": " + params + "}";
}

// ΔW_e [out, in] as PEFT computes it from the fused tensors.
std::vector<float> peft_delta(const TensorData& a, const TensorData& b, int64_t r, int64_t e, int64_t out, int64_t in,
                              bool swapped) {
  std::vector<float> d(static_cast<size_t>(out * in), 0.f);
  const int64_t a_cols = a.shape[1], b_cols = b.shape[1];
  for (int64_t o = 0; o < out; ++o)
    for (int64_t k = 0; k < in; ++k) {
      double acc = 0;
      for (int64_t j = 0; j < r; ++j)
        acc += swapped ? double{b.values[o * b_cols + j * kE + e]} * a.values[(e * r + j) * a_cols + k]
                       : double{b.values[k * b_cols + j * kE + e]} * a.values[(e * r + j) * a_cols + o];
      d[static_cast<size_t>(o * in + k)] = static_cast<float>(acc);
    }
  return d;
}

// ΔW rows [row0, row0 + rows) of expert e from the loaded module (b @ a).
void expect_delta(const LoraAdapter& ad, const std::string& module, const std::vector<float>& want, int64_t row0,
                  int64_t rows, int64_t in) {
  auto it = ad.modules.find(module);
  ASSERT_NE(it, ad.modules.end()) << module;
  const LoraModule& m = it->second;
  ASSERT_EQ(m.a.shape(), (Shape{m.rank, in})) << module;
  ASSERT_EQ(m.b.shape(), (Shape{rows, m.rank})) << module;
  EXPECT_FLOAT_EQ(m.scaling, 3.0f);  // alpha 6 / r 2
  for (int64_t o = 0; o < rows; ++o)
    for (int64_t k = 0; k < in; ++k) {
      double acc = 0;
      for (int64_t j = 0; j < m.rank; ++j)
        acc += double{to_float(m.b, static_cast<size_t>(o * m.rank + j))} * to_float(m.a, static_cast<size_t>(j * in + k));
      ASSERT_NEAR(acc, want[static_cast<size_t>((row0 + o) * in + k)], 1e-5) << module << " [" << o << ", " << k << "]";
    }
}

void check_layout(const std::string& version, bool swapped) {
  const int64_t r = 2, gu_out = 2 * kI;
  AdapterWriter w("experts3d");
  // Two targeted parameters: gate_up_proj (wrapped first) one ".base_layer" deeper than down_proj.
  const Shape gu_a = swapped ? Shape{r * kE, kHidden} : Shape{r * kE, gu_out};
  const Shape gu_b = swapped ? Shape{gu_out, r * kE} : Shape{kHidden, r * kE};
  const Shape d_a = swapped ? Shape{r * kE, kI} : Shape{r * kE, kHidden};
  const Shape d_b = swapped ? Shape{kHidden, r * kE} : Shape{kI, r * kE};
  const TensorData gua = w.add(key(kExperts, ".base_layer.lora_A.weight"), gu_a);
  const TensorData gub = w.add(key(kExperts, ".base_layer.lora_B.weight"), gu_b, DType::kBF16);
  const TensorData da = w.add(key(kExperts, ".lora_A.weight"), d_a);
  const TensorData db = w.add(key(kExperts, ".lora_B.weight"), d_b);
  w.write(config(version, "[\"mlp.experts.gate_up_proj\", \"mlp.experts.down_proj\"]"));
  Result<LoraAdapter> ad = load_adapter("x", w.dir(), moe_base());
  ASSERT_TRUE(ad.is_ok()) << ad.status().to_string();
  EXPECT_EQ(ad->modules.size(), static_cast<size_t>(3 * kE));
  // bf16 storage rounds the B values the oracle uses too
  TensorData gub_r = gub;
  for (float& v : gub_r.values) v = bf16_to_float(float_to_bf16(v));
  for (int64_t e = 0; e < kE; ++e) {
    const std::string p = kExperts + "." + std::to_string(e) + ".";
    const std::vector<float> gu = peft_delta(gua, gub_r, r, e, gu_out, kHidden, swapped);
    expect_delta(*ad, p + "gate_proj", gu, 0, kI, kHidden);
    expect_delta(*ad, p + "up_proj", gu, kI, kI, kHidden);
    expect_delta(*ad, p + "down_proj", peft_delta(da, db, r, e, kHidden, kI, swapped), 0, kHidden, kI);
  }
}

TEST(ExpertAdapter, FusedParametersPeft021) { check_layout("0.21.2", true); }
TEST(ExpertAdapter, FusedParametersPeft0191) { check_layout("0.19.1", true); }
TEST(ExpertAdapter, FusedParametersPeft018Orientation) { check_layout("0.18.0", false); }
TEST(ExpertAdapter, FusedParametersWithoutVersionArePeft017) { check_layout("", false); }

TEST(ExpertAdapter, OneTargetedParameterHasNoBaseLayer) {
  AdapterWriter w("down_only");
  w.add(key(kExperts, ".lora_A.weight"), {2 * kE, kI});
  w.add(key(kExperts, ".lora_B.weight"), {kHidden, 2 * kE});
  w.write(config("0.21.2", "[\"mlp.experts.down_proj\"]"));
  Result<LoraAdapter> ad = load_adapter("x", w.dir(), moe_base());
  ASSERT_TRUE(ad.is_ok()) << ad.status().to_string();
  EXPECT_EQ(ad->modules.size(), static_cast<size_t>(kE));
  EXPECT_TRUE(ad->modules.count(kExperts + ".2.down_proj"));
}

TEST(ExpertAdapter, LayoutContradictingVersionIsRefused) {
  AdapterWriter w("contradict");
  // PEFT 0.18 shapes (A [rE, out 2I], B [in H, rE]) in a file that says 0.21.2
  w.add(key(kExperts, ".base_layer.lora_A.weight"), {2 * kE, 2 * kI});
  w.add(key(kExperts, ".base_layer.lora_B.weight"), {kHidden, 2 * kE});
  w.add(key(kExperts, ".lora_A.weight"), {2 * kE, kI});
  w.add(key(kExperts, ".lora_B.weight"), {kHidden, 2 * kE});
  w.write(config("0.21.2", "[\"mlp.experts.gate_up_proj\", \"mlp.experts.down_proj\"]"));
  Result<LoraAdapter> ad = load_adapter("x", w.dir(), moe_base());
  ASSERT_FALSE(ad.is_ok());
  EXPECT_NE(ad.status().message().find("gate_up_proj"), std::string::npos) << ad.status().to_string();
  EXPECT_NE(ad.status().message().find("other PEFT layout"), std::string::npos) << ad.status().to_string();
}

TEST(ExpertAdapter, WrongExpertCountIsRefused) {
  AdapterWriter w("count");
  w.add(key(kExperts, ".lora_A.weight"), {2 * (kE + 1), kI});
  w.add(key(kExperts, ".lora_B.weight"), {kHidden, 2 * (kE + 1)});
  w.write(config("0.21.2", "[\"mlp.experts.down_proj\"]"));
  Result<LoraAdapter> ad = load_adapter("x", w.dir(), moe_base());
  ASSERT_FALSE(ad.is_ok());
  EXPECT_NE(ad.status().message().find("3 experts"), std::string::npos) << ad.status().to_string();
}

TEST(ExpertAdapter, ExpertAdapterOnDenseModelIsRefused) {
  AdapterWriter w("dense");
  w.add(key(kExperts, ".lora_A.weight"), {2 * kE, kI});
  w.add(key(kExperts, ".lora_B.weight"), {kHidden, 2 * kE});
  w.write(config("0.21.2", "[\"mlp.experts.down_proj\"]"));
  Result<LoraAdapter> ad = load_adapter("x", w.dir(), fake_base());
  ASSERT_FALSE(ad.is_ok());
  EXPECT_NE(ad.status().message().find("dense model"), std::string::npos) << ad.status().to_string();

  AdapterWriter w2("dense2d");
  w2.add(key(kExperts + ".0.gate_proj", ".lora_A.weight"), {2, kHidden});
  w2.add(key(kExperts + ".0.gate_proj", ".lora_B.weight"), {kI, 2});
  w2.write(config("", "null", "[\"gate_proj\"]"));
  ad = load_adapter("x", w2.dir(), fake_base());
  ASSERT_FALSE(ad.is_ok());
  EXPECT_NE(ad.status().message().find("dense model"), std::string::npos) << ad.status().to_string();
}

TEST(ExpertAdapter, ExpertIndexBeyondTheModelIsRefused) {
  AdapterWriter w("index");
  w.add(key(kExperts + ".3.gate_proj", ".lora_A.weight"), {2, kHidden});
  w.add(key(kExperts + ".3.gate_proj", ".lora_B.weight"), {kI, 2});
  w.write(config("", "null", "[\"gate_proj\"]"));
  Result<LoraAdapter> ad = load_adapter("x", w.dir(), moe_base());
  ASSERT_FALSE(ad.is_ok());
  EXPECT_NE(ad.status().message().find("experts.3.gate_proj"), std::string::npos) << ad.status().to_string();
}

TEST(ExpertAdapter, PerExpertModulesLoadAsLinears) {
  AdapterWriter w("per_expert");
  for (int64_t e = 0; e < kE; ++e)
    add_linear_lora(w, find_module(moe_base(), kExperts + "." + std::to_string(e) + ".up_proj"), 2);
  w.write(config("", "null", "[\"up_proj\"]"));
  Result<LoraAdapter> ad = load_adapter("x", w.dir(), moe_base());
  ASSERT_TRUE(ad.is_ok()) << ad.status().to_string();
  EXPECT_EQ(ad->modules.size(), static_cast<size_t>(kE));
}

TEST(ExpertAdapter, SameExpertTwiceIsRefused) {
  AdapterWriter w("twice");
  add_linear_lora(w, find_module(moe_base(), kExperts + ".1.down_proj"), 2);
  w.add(key(kExperts, ".lora_A.weight"), {2 * kE, kI});
  w.add(key(kExperts, ".lora_B.weight"), {kHidden, 2 * kE});
  w.write(config("0.21.2", "[\"mlp.experts.down_proj\"]", "[\"down_proj\"]"));
  Result<LoraAdapter> ad = load_adapter("x", w.dir(), moe_base());
  ASSERT_FALSE(ad.is_ok());
  EXPECT_NE(ad.status().message().find("both"), std::string::npos) << ad.status().to_string();
}

TEST(ExpertAdapter, RouterThroughTwoDimensionalTargetParameter) {
  AdapterWriter w("router");
  add_linear_lora(w, find_module(moe_base(), "model.layers.1.mlp.gate"), 2);
  w.write(config("0.21.2", "[\"mlp.gate.weight\"]"));
  Result<LoraAdapter> ad = load_adapter("x", w.dir(), moe_base());
  ASSERT_TRUE(ad.is_ok()) << ad.status().to_string();
  ASSERT_TRUE(ad->modules.count("model.layers.1.mlp.gate"));
  EXPECT_EQ(ad->modules.at("model.layers.1.mlp.gate").b.shape(), (Shape{kE, 2}));
}

TEST(ExpertAdapter, UntargetedFusedParameterIsRefused) {
  AdapterWriter w("untargeted");
  w.add(key(kExperts, ".lora_A.weight"), {2 * kE, kI});
  w.add(key(kExperts, ".lora_B.weight"), {kHidden, 2 * kE});
  w.write(config("0.21.2", "[\"self_attn.q_proj.weight\"]"));
  Result<LoraAdapter> ad = load_adapter("x", w.dir(), moe_base());
  ASSERT_FALSE(ad.is_ok());
  EXPECT_NE(ad.status().message().find("targets none"), std::string::npos) << ad.status().to_string();
}

}  // namespace
}  // namespace nb::lora_test
