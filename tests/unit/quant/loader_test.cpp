// Loading every format into the canonical layout. The checkpoints are packed here by the spec's
// packers re-stated in quant_test_util.h (never by src/quant), from random "true" codes, scales,
// zero points and g_idx; the loader must give those back exactly, and dequantize to (q - z) * s.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "quant/compressed_tensors.h"
#include "quant/quant_config.h"
#include "quant_test_util.h"

namespace nb::quant {
namespace {

using testing::RawTensor;
using testing::rand_float;
using testing::rand_int;
using testing::raw;
using testing::raw_float;
using testing::TempDir;

// The truth a test packs: signed codes q[out][in], scales s[out][G], signed zeros z[out][G], g_idx.
struct Truth {
  int64_t out = 0, in = 0, gs = 0, G = 0;
  int bits = 4;
  bool sym = true;
  std::vector<int> q, z;
  std::vector<float> s;  // already rounded to the scale dtype
  std::vector<int32_t> g_idx;
  int64_t group(int64_t c) const { return g_idx.empty() ? c / gs : g_idx[c]; }
  float value(int64_t o, int64_t c) const {
    const int64_t g = group(c);
    return static_cast<float>(q[o * in + c] - (sym ? 0 : z[o * G + g])) * s[o * G + g];
  }
};

Truth random_truth(std::mt19937_64& rng, int64_t out, int64_t in, int bits, int64_t gs, bool sym, bool act,
                   DType dtype) {
  Truth t;
  t.out = out;
  t.in = in;
  t.bits = bits;
  t.gs = gs > 0 ? gs : in;
  t.G = (in + t.gs - 1) / t.gs;
  t.sym = sym;
  const int qmin = -(1 << (bits - 1)), qmax = (1 << (bits - 1)) - 1;
  for (int64_t i = 0; i < out * in; ++i) t.q.push_back(rand_int(rng, qmin, qmax));
  for (int64_t i = 0; i < out * t.G; ++i) {
    t.s.push_back(round_to_dtype(rand_float(rng, 0.002f, 0.2f), dtype));
    t.z.push_back(sym ? 0 : rand_int(rng, qmin, qmax));
  }
  if (act) {
    for (int64_t c = 0; c < in; ++c) t.g_idx.push_back(static_cast<int32_t>(c / t.gs));
    std::shuffle(t.g_idx.begin(), t.g_idx.end(), rng);
  }
  return t;
}

// compressed-tensors tensors of `t` under `prefix`, packed by the spec packers.
void add_ct_tensors(const std::string& prefix, const Truth& t, DType dtype, bool channel, std::vector<RawTensor>* out) {
  std::vector<uint32_t> packed;
  for (int64_t o = 0; o < t.out; ++o) {
    std::vector<int> row(t.q.begin() + o * t.in, t.q.begin() + (o + 1) * t.in);
    std::vector<uint32_t> w = testing::spec_ct_pack_row(row, t.bits);
    packed.insert(packed.end(), w.begin(), w.end());
  }
  const int64_t words = static_cast<int64_t>(packed.size()) / t.out;
  out->push_back(raw(prefix + ".weight_packed", DType::kI32, {t.out, words}, packed));
  out->push_back(raw_float(prefix + ".weight_scale", dtype, {t.out, channel ? 1 : t.G}, t.s));
  out->push_back(raw(prefix + ".weight_shape", DType::kI64, {2}, std::vector<int64_t>{t.out, t.in}));
  if (!t.sym) {
    std::vector<uint32_t> zp = testing::spec_ct_pack_zp(t.z, t.out, t.G, t.bits);
    out->push_back(raw(prefix + ".weight_zero_point", DType::kI32, {static_cast<int64_t>(zp.size()) / t.G, t.G}, zp));
  }
  if (!t.g_idx.empty()) out->push_back(raw(prefix + ".weight_g_idx", DType::kI32, {t.in}, t.g_idx));
}

std::string ct_config_json(int bits, int64_t gs, bool sym, bool act, const std::string& ignore = "[\"lm_head\"]",
                           const std::string& version = "0.12.2") {
  std::string w = strformat(R"({"num_bits": %d, "type": "int", "symmetric": %s, "strategy": "%s", "group_size": %s,
                                "actorder": %s, "dynamic": false})",
                            bits, sym ? "true" : "false", gs > 0 ? "group" : "channel",
                            gs > 0 ? std::to_string(gs).c_str() : "null", act ? "\"group\"" : "null");
  return R"({"architectures": ["LlamaForCausalLM"], "quantization_config": {"quant_method": "compressed-tensors",
            "format": "pack-quantized", "version": ")" +
         version + R"(", "quantization_status": "compressed", "config_groups": {"group_0": {"targets": ["Linear"],
            "weights": )" +
         w + R"(, "input_activations": null, "output_activations": null, "format": "pack-quantized"}}, "ignore": )" +
         ignore + "}}";
}

struct Loaded {
  Checkpoint ck;
  QuantConfig qc;
};

Loaded open(const std::string& dir) {
  Result<Checkpoint> ck = Checkpoint::open_dir(dir);
  EXPECT_TRUE(ck.is_ok()) << ck.status().to_string();
  Result<QuantConfig> qc = load_quant_config(dir);
  EXPECT_TRUE(qc.is_ok()) << qc.status().to_string();
  return {std::move(ck).value(), std::move(qc).value()};
}

void expect_matches_truth(const QuantizedWeight& w, const Truth& t) {
  ASSERT_EQ(w.out, t.out);
  ASSERT_EQ(w.in, t.in);
  ASSERT_EQ(w.bits, t.bits);
  ASSERT_EQ(w.num_groups, t.G);
  ASSERT_EQ(w.symmetric, t.sym);
  ASSERT_TRUE(w.validate().is_ok()) << w.validate().to_string();
  bool trivial = true;  // a g_idx equal to c / gs means contiguous groups: the loader drops it
  for (size_t c = 0; c < t.g_idx.size(); ++c) trivial = trivial && t.g_idx[c] == static_cast<int32_t>(c / t.gs);
  EXPECT_EQ(w.g_idx, trivial ? std::vector<int32_t>{} : t.g_idx);
  for (int64_t o = 0; o < t.out; ++o) {
    for (int64_t c = 0; c < t.in; ++c) ASSERT_EQ(w.code(o, c), t.q[o * t.in + c]) << o << "," << c;
    for (int64_t g = 0; g < t.G; ++g) {
      ASSERT_EQ(w.scale(o, g), t.s[o * t.G + g]);
      ASSERT_EQ(w.zero(o, g), t.sym ? 0 : t.z[o * t.G + g]);
    }
  }
  std::vector<float> d = dequantize_float(w);
  for (int64_t o = 0; o < t.out; ++o)
    for (int64_t c = 0; c < t.in; ++c) ASSERT_EQ(d[o * t.in + c], t.value(o, c)) << o << "," << c;
}

// Odd and prime shapes x group sizes x sym/asym x g_idx x INT4/INT8: pack (spec) → write → load →
// same codes and values; and the writer packs the loaded weight into the same bytes.
TEST(CompressedTensors, RoundTripSweep) {
  NB_SEEDED_RNG(rng);
  const int64_t outs[] = {7, 13};
  const int64_t ins[] = {10, 37, 96, 128, 136};
  for (int bits : {4, 8})
    for (int64_t gs : {int64_t{32}, int64_t{64}, int64_t{128}, int64_t{8}, int64_t{-1}})
      for (bool sym : {true, false})
        for (bool act : {false, true}) {
          if (act && gs < 0) continue;
          SCOPED_TRACE(::testing::Message() << "int" << bits << " gs " << gs << " sym " << sym << " act " << act);
          TempDir dir;
          std::vector<RawTensor> tensors;
          std::vector<std::pair<std::string, Truth>> truths;
          const DType dtype = bits == 4 ? DType::kBF16 : DType::kF16;
          for (int64_t out : outs)
            for (int64_t in : ins) {
              if (gs > 0 && in % gs != 0) continue;  // compressed-tensors cannot write these
              std::string prefix = strformat("model.layers.%lld.mlp.experts.%lld.down_proj", static_cast<long long>(out),
                                             static_cast<long long>(in));
              Truth t = random_truth(rng, out, in, bits, gs, sym, act, dtype);
              add_ct_tensors(prefix, t, dtype, gs < 0, &tensors);
              truths.emplace_back(prefix, std::move(t));
            }
          if (truths.empty()) continue;
          testing::write_checkpoint(dir.path(), tensors, ct_config_json(bits, gs, sym, act));
          Loaded l = open(dir.path());
          for (const auto& [prefix, t] : truths) {
            SCOPED_TRACE(prefix);
            Result<LinearWeight> w = load_linear(l.ck, l.qc, prefix, t.out, t.in);
            ASSERT_TRUE(w.is_ok()) << w.status().to_string();
            ASSERT_TRUE(w->is_quantized());
            expect_matches_truth(*w->quantized, t);
            EXPECT_EQ(w->quantized->source_format, "compressed-tensors pack-quantized 0.12.2");
            for (const NamedTensor& nt : compressed_tensors_tensors(prefix, *w->quantized)) {
              const TensorInfo* orig = l.ck.find(nt.name);
              ASSERT_NE(orig, nullptr) << nt.name;
              EXPECT_EQ(nt.shape, orig->shape) << nt.name;
              EXPECT_EQ(nt.dtype, orig->dtype) << nt.name;
              ASSERT_EQ(nt.data.size(), orig->nbytes()) << nt.name;
              EXPECT_EQ(std::memcmp(nt.data.data(), orig->data, nt.data.size()), 0) << nt.name;
            }
          }
        }
}

TEST(CompressedTensors, GroupSizeThatDoesNotDivideIsUnsupported) {
  NB_SEEDED_RNG(rng);
  TempDir dir;
  Truth t = random_truth(rng, 8, 96, 4, 64, true, false, DType::kBF16);  // G = 2, last group short
  std::vector<RawTensor> ts;
  add_ct_tensors("m.q_proj", t, DType::kBF16, false, &ts);
  testing::write_checkpoint(dir.path(), ts, ct_config_json(4, 64, true, false));
  Loaded l = open(dir.path());
  Result<LinearWeight> w = load_linear(l.ck, l.qc, "m.q_proj", 8, 96);
  ASSERT_FALSE(w.is_ok());
  EXPECT_EQ(w.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(w.status().message().find("in=96 is not a multiple of the group size 64"), std::string::npos)
      << w.status().to_string();
}

TEST(CompressedTensors, LegacyUnpackedZeroPointsAndSymmetricZeroPoints) {
  NB_SEEDED_RNG(rng);
  TempDir dir;
  Truth asym = random_truth(rng, 9, 64, 4, 32, false, false, DType::kBF16);
  Truth sym = random_truth(rng, 9, 64, 4, 32, true, false, DType::kBF16);
  std::vector<RawTensor> ts;
  add_ct_tensors("a.o_proj", asym, DType::kBF16, false, &ts);
  // < 0.9.4 wrote zero points unpacked as I8 [out, G].
  std::vector<int8_t> z8(asym.z.begin(), asym.z.end());
  for (auto& t : ts)
    if (t.name == "a.o_proj.weight_zero_point") t = raw("a.o_proj.weight_zero_point", DType::kI8, {9, 2}, z8);
  testing::write_checkpoint(dir.path(), ts, ct_config_json(4, 32, false, false, "[]", "0.9.1"));
  Loaded l = open(dir.path());
  Result<LinearWeight> w = load_linear(l.ck, l.qc, "a.o_proj", 9, 64);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  expect_matches_truth(*w->quantized, asym);

  // A symmetric checkpoint that still carries an all-zero zero point: ignored.
  TempDir dir2;
  std::vector<RawTensor> ts2;
  add_ct_tensors("s.o_proj", sym, DType::kBF16, false, &ts2);
  ts2.push_back(raw("s.o_proj.weight_zero_point", DType::kI8, {9, 2}, std::vector<int8_t>(18, 0)));
  testing::write_checkpoint(dir2.path(), ts2, ct_config_json(4, 32, true, false));
  Loaded l2 = open(dir2.path());
  Result<LinearWeight> w2 = load_linear(l2.ck, l2.qc, "s.o_proj", 9, 64);
  ASSERT_TRUE(w2.is_ok()) << w2.status().to_string();
  expect_matches_truth(*w2->quantized, sym);
}

TEST(CompressedTensors, TensorStrategyExpandsToOneScalePerRow) {
  NB_SEEDED_RNG(rng);
  TempDir dir;
  Truth t = random_truth(rng, 5, 12, 8, -1, false, false, DType::kF32);
  for (int64_t o = 0; o < 5; ++o) {  // one scale and zero point for the whole tensor
    t.s[o] = t.s[0];
    t.z[o] = t.z[0];
  }
  std::vector<uint32_t> packed;
  for (int64_t o = 0; o < 5; ++o) {
    auto w = testing::spec_ct_pack_row(std::vector<int>(t.q.begin() + o * 12, t.q.begin() + (o + 1) * 12), 8);
    packed.insert(packed.end(), w.begin(), w.end());
  }
  std::vector<RawTensor> ts = {raw("t.up_proj.weight_packed", DType::kI32, {5, 3}, packed),
                               raw_float("t.up_proj.weight_scale", DType::kF32, {1}, {t.s[0]}),
                               raw("t.up_proj.weight_shape", DType::kI64, {2}, std::vector<int64_t>{5, 12}),
                               raw("t.up_proj.weight_zero_point", DType::kI8, {1}, std::vector<int8_t>{
                                                                                        static_cast<int8_t>(t.z[0])})};
  testing::write_checkpoint(dir.path(), ts, R"({"quantization_config": {"quant_method": "compressed-tensors",
    "format": "pack-quantized", "config_groups": {"g": {"targets": ["Linear"],
    "weights": {"num_bits": 8, "symmetric": false, "strategy": "tensor"}}}}})");
  Loaded l = open(dir.path());
  Result<LinearWeight> w = load_linear(l.ck, l.qc, "t.up_proj", 5, 12);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  EXPECT_EQ(w->quantized->strategy, QuantStrategy::kTensor);
  expect_matches_truth(*w->quantized, t);
  // And written back the same way.
  for (const NamedTensor& nt : compressed_tensors_tensors("t.up_proj", *w->quantized)) {
    const TensorInfo* orig = l.ck.find(nt.name);
    ASSERT_NE(orig, nullptr);
    EXPECT_EQ(nt.shape, orig->shape) << nt.name;
    EXPECT_EQ(std::memcmp(nt.data.data(), orig->data, nt.data.size()), 0) << nt.name;
  }
}

TEST(CompressedTensors, ShardedCheckpointAndMoePrefixes) {
  NB_SEEDED_RNG(rng);
  TempDir dir;
  std::vector<RawTensor> ts;
  std::vector<std::pair<std::string, Truth>> truths;
  for (int e = 0; e < 4; ++e)
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      std::string prefix = strformat("model.layers.0.mlp.experts.%d.%s", e, proj);
      Truth t = random_truth(rng, 16, 64, 4, 32, true, false, DType::kBF16);
      add_ct_tensors(prefix, t, DType::kBF16, false, &ts);
      truths.emplace_back(prefix, std::move(t));
    }
  ts.push_back(raw_float("model.layers.0.mlp.gate.weight", DType::kBF16, {4, 64}, std::vector<float>(256, 0.25f)));
  testing::write_checkpoint(dir.path(), ts, ct_config_json(4, 32, true, false, R"(["lm_head", "re:.*mlp.gate$"])"),
                            /*max_shard_bytes=*/1500);
  ASSERT_TRUE(file_exists(dir.sub("model.safetensors.index.json")));
  Loaded l = open(dir.path());
  EXPECT_GT(l.ck.num_files(), 2u);
  for (const auto& [prefix, t] : truths) {
    Result<LinearWeight> w = load_linear(l.ck, l.qc, prefix, 16, 64);
    ASSERT_TRUE(w.is_ok()) << w.status().to_string();
    expect_matches_truth(*w->quantized, t);
  }
  Result<LinearWeight> router = load_linear(l.ck, l.qc, "model.layers.0.mlp.gate", 4, 64);
  ASSERT_TRUE(router.is_ok()) << router.status().to_string();
  EXPECT_FALSE(router->is_quantized());
  EXPECT_EQ(router->dense.shape(), (Shape{4, 64}));
  EXPECT_EQ(bf16_to_float(router->dense.as<uint16_t>()[7]), 0.25f);
}

// ---- GPTQ --------------------------------------------------------------------------------------

std::string gptq_config(int bits, int64_t gs, bool sym, bool desc_act, bool v2) {
  return strformat(R"({"quantization_config": {"quant_method": "gptq", "bits": %d, "group_size": %lld,
                       "desc_act": %s, "sym": %s, "checkpoint_format": "%s"}})",
                   bits, static_cast<long long>(gs), desc_act ? "true" : "false", sym ? "true" : "false",
                   v2 ? "gptq_v2" : "gptq");
}

// GPTQ tensors from the truth: unsigned u = q + 2^(b-1), zeros z_u = z + 2^(b-1) (8 for symmetric).
void add_gptq_tensors(const std::string& p, const Truth& t, bool v2, std::vector<RawTensor>* out) {
  const int off = 1 << (t.bits - 1);
  std::vector<int> u(static_cast<size_t>(t.in * t.out)), zu(static_cast<size_t>(t.G * t.out));
  for (int64_t k = 0; k < t.in; ++k)
    for (int64_t n = 0; n < t.out; ++n) u[k * t.out + n] = t.q[n * t.in + k] + off;
  std::vector<float> sc(static_cast<size_t>(t.G * t.out));
  for (int64_t g = 0; g < t.G; ++g)
    for (int64_t n = 0; n < t.out; ++n) {
      zu[g * t.out + n] = (t.sym ? 0 : t.z[n * t.G + g]) + off;
      sc[g * t.out + n] = t.s[n * t.G + g];
    }
  const int pf = 32 / t.bits;
  out->push_back(raw(p + ".qweight", DType::kI32, {t.in / pf, t.out}, testing::spec_gptq_pack_qweight(u, t.in, t.out, t.bits)));
  out->push_back(raw(p + ".qzeros", DType::kI32, {t.G, t.out / pf}, testing::spec_gptq_pack_qzeros(zu, t.G, t.out, t.bits, v2)));
  out->push_back(raw_float(p + ".scales", DType::kF16, {t.G, t.out}, sc));
  std::vector<int32_t> g_idx = t.g_idx;
  if (g_idx.empty())
    for (int64_t k = 0; k < t.in; ++k) g_idx.push_back(static_cast<int32_t>(k / t.gs));
  out->push_back(raw(p + ".g_idx", DType::kI32, {t.in}, g_idx));
}

TEST(Gptq, V1AndV2RoundTrips) {
  NB_SEEDED_RNG(rng);
  for (int bits : {4, 8})
    for (bool v2 : {false, true})
      for (bool sym : {true, false})
        for (bool act : {false, true})
          for (int64_t gs : {int64_t{32}, int64_t{-1}}) {
            if (act && gs < 0) continue;
            SCOPED_TRACE(::testing::Message() << "int" << bits << " v2 " << v2 << " sym " << sym << " act " << act
                                             << " gs " << gs);
            TempDir dir;
            std::vector<RawTensor> ts;
            std::vector<std::pair<std::string, Truth>> truths;
            for (auto [out, in] : {std::pair<int64_t, int64_t>{16, 96}, {24, 40}, {8, 136}}) {
              Truth t = random_truth(rng, out, in, bits, gs, sym, act, DType::kF16);
              if (!sym && !v2)  // v1 cannot store a zero point of 0 (unsigned): keep 1..15
                for (auto& z : t.z) z = std::max(z, 1 - (1 << (bits - 1)));
              std::string p = strformat("model.layers.0.self_attn.proj%lld", static_cast<long long>(in));
              add_gptq_tensors(p, t, v2, &ts);
              truths.emplace_back(p, std::move(t));
            }
            testing::write_checkpoint(dir.path(), ts, gptq_config(bits, gs, sym, act, v2));
            Loaded l = open(dir.path());
            for (const auto& [p, t] : truths) {
              Result<LinearWeight> w = load_linear(l.ck, l.qc, p, t.out, t.in);
              ASSERT_TRUE(w.is_ok()) << w.status().to_string();
              expect_matches_truth(*w->quantized, t);
              EXPECT_EQ(w->quantized->source_format, v2 ? "gptq_v2" : "gptq");
              // Inspection finds the same shape without being told.
              Result<LinearLayout> d = describe_linear(l.ck, l.qc, p);
              ASSERT_TRUE(d.is_ok()) << d.status().to_string();
              EXPECT_EQ(d->out, t.out);
              EXPECT_EQ(d->in, t.in);
              EXPECT_EQ(d->has_g_idx, act);
            }
          }
}

TEST(Gptq, SpecWordsDecode) {
  // Vector 4: qweight[0][0] = 0x52FC9630 holds u[0..7][0] = [0,3,6,9,12,15,2,5].
  // Vector 5 / dequantization check: v1 symmetric-style qzeros 0x77777777 decode to z = 8.
  TempDir dir;
  std::vector<RawTensor> ts = {
      raw("l.qweight", DType::kI32, {1, 8}, std::vector<uint32_t>{0x52FC9630u, 0, 0, 0, 0, 0, 0, 0}),
      raw("l.qzeros", DType::kI32, {1, 1}, std::vector<uint32_t>{0x77777777u}),
      raw_float("l.scales", DType::kF16, {1, 8}, std::vector<float>(8, 0.5f)),
      raw("l.g_idx", DType::kI32, {8}, std::vector<int32_t>(8, 0))};
  testing::write_checkpoint(dir.path(), ts, gptq_config(4, 8, /*sym=*/false, false, /*v2=*/false));
  Loaded l = open(dir.path());
  Result<LinearWeight> w = load_linear(l.ck, l.qc, "l", 8, 8);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  const int u[8] = {0, 3, 6, 9, 12, 15, 2, 5};
  std::vector<float> d = dequantize_float(*w->quantized);
  for (int k = 0; k < 8; ++k) {
    EXPECT_EQ(w->quantized->code(0, k), u[k] - 8);
    EXPECT_EQ(w->quantized->zero(0, 0), 0);  // z = 8 unsigned
    EXPECT_EQ(d[k], (u[k] - 8) * 0.5f);      // u = 0 → -8·s
  }
  EXPECT_EQ(d[0], -4.0f);
  // The same qzeros read as v2 mean z = 7; 0x88888888 as v2 means 8 again.
  TempDir dir2;
  ts[1] = raw("l.qzeros", DType::kI32, {1, 1}, std::vector<uint32_t>{0x88888888u});
  testing::write_checkpoint(dir2.path(), ts, gptq_config(4, 8, false, false, /*v2=*/true));
  Loaded l2 = open(dir2.path());
  Result<LinearWeight> w2 = load_linear(l2.ck, l2.qc, "l", 8, 8);
  ASSERT_TRUE(w2.is_ok()) << w2.status().to_string();
  for (int n = 0; n < 8; ++n) EXPECT_EQ(w2->quantized->zero(n, 0), 0);
}

TEST(Gptq, Errors) {
  NB_SEEDED_RNG(rng);
  TempDir dir;
  Truth t = random_truth(rng, 16, 64, 4, 32, false, true, DType::kF16);
  std::vector<RawTensor> ts;
  add_gptq_tensors("m.q", t, true, &ts);
  std::vector<RawTensor> bad_gidx = ts;
  testing::write_checkpoint(dir.path(), ts, gptq_config(4, 32, false, true, true));
  Loaded l = open(dir.path());
  auto err = [&](const Loaded& ld, int64_t out, int64_t in) {
    Result<LinearWeight> w = load_linear(ld.ck, ld.qc, "m.q", out, in);
    EXPECT_FALSE(w.is_ok());
    return w.is_ok() ? std::string() : w.status().message();
  };
  EXPECT_NE(err(l, 16, 60).find("in=60 is not a multiple of 8"), std::string::npos);
  EXPECT_NE(err(l, 16, 72).find("m.q.qweight: expected shape [9, 16] (in=72, out=16, 8 codes per int32 along in), got [8, 16]"),
            std::string::npos) << err(l, 16, 72);
  EXPECT_NE(err(l, 24, 64).find("m.q.qweight: expected shape [8, 24]"), std::string::npos);
  // g_idx value out of range.
  for (auto& r : bad_gidx)
    if (r.name == "m.q.g_idx") {
      std::vector<int32_t> g(64, 0);
      g[5] = 2;  // G = 2
      r = raw("m.q.g_idx", DType::kI32, {64}, g);
    }
  TempDir dir2;
  testing::write_checkpoint(dir2.path(), bad_gidx, gptq_config(4, 32, false, true, true));
  Loaded l2 = open(dir2.path());
  EXPECT_NE(err(l2, 16, 64).find("m.q.g_idx: row 5: group 2 out of range [0, 2)"), std::string::npos) << err(l2, 16, 64);
  // Missing qzeros for an asymmetric checkpoint; missing scales.
  for (const char* drop : {"m.q.qzeros", "m.q.scales", "m.q.g_idx"}) {
    std::vector<RawTensor> partial;
    for (const auto& r : ts)
      if (r.name != drop) partial.push_back(r);
    TempDir d;
    testing::write_checkpoint(d.path(), partial, gptq_config(4, 32, false, true, true));
    Loaded ld = open(d.path());
    std::string m = err(ld, 16, 64);
    EXPECT_NE(m.find(std::string("tensor '") + drop + "' not found"), std::string::npos) << m;
  }
}

// A GPTQ config names no modules: a module stored plain (an MoE router, Qwen2-MoE's
// shared_expert_gate, which GPTQModel leaves unquantized) loads as the plain weight it is.
TEST(Gptq, ModuleStoredPlainLoadsPlain) {
  NB_SEEDED_RNG(rng);
  TempDir dir;
  Truth t = random_truth(rng, 16, 64, 4, 32, false, true, DType::kF16);
  std::vector<RawTensor> ts;
  add_gptq_tensors("m.q", t, true, &ts);
  std::vector<float> router(8 * 64);
  for (size_t i = 0; i < router.size(); ++i) router[i] = static_cast<float>(i % 7) - 3.f;
  ts.push_back(raw_float("m.gate.weight", DType::kF16, {8, 64}, router));
  testing::write_checkpoint(dir.path(), ts, gptq_config(4, 32, false, true, true));
  Loaded l = open(dir.path());
  Result<LinearWeight> q = load_linear(l.ck, l.qc, "m.q", 16, 64);
  ASSERT_TRUE(q.is_ok()) << q.status().to_string();
  EXPECT_TRUE(q->is_quantized());
  Result<LinearWeight> g = load_linear(l.ck, l.qc, "m.gate", 8, 64);
  ASSERT_TRUE(g.is_ok()) << g.status().to_string();
  EXPECT_FALSE(g->is_quantized());
  EXPECT_EQ(g->dense.dtype(), DType::kF16);
  EXPECT_EQ(fp16_to_float(g->dense.as<uint16_t>()[9]), router[9]);
  // the config's shape still applies
  Result<LinearWeight> bad = load_linear(l.ck, l.qc, "m.gate", 9, 64);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("expected shape [9, 64]"), std::string::npos) << bad.status().to_string();
}

// ---- AWQ ---------------------------------------------------------------------------------------

void add_awq_tensors(const std::string& p, const Truth& t, std::vector<RawTensor>* out) {
  std::vector<int> u(static_cast<size_t>(t.in * t.out)), zu(static_cast<size_t>(t.G * t.out));
  std::vector<float> sc(static_cast<size_t>(t.G * t.out));
  for (int64_t k = 0; k < t.in; ++k)
    for (int64_t n = 0; n < t.out; ++n) u[k * t.out + n] = t.q[n * t.in + k] + 8;
  for (int64_t g = 0; g < t.G; ++g)
    for (int64_t n = 0; n < t.out; ++n) {
      zu[g * t.out + n] = t.z[n * t.G + g] + 8;
      sc[g * t.out + n] = t.s[n * t.G + g];
    }
  out->push_back(raw(p + ".qweight", DType::kI32, {t.in, t.out / 8}, testing::spec_awq_pack(u, t.in, t.out)));
  out->push_back(raw(p + ".qzeros", DType::kI32, {t.G, t.out / 8}, testing::spec_awq_pack(zu, t.G, t.out)));
  out->push_back(raw_float(p + ".scales", DType::kF16, {t.G, t.out}, sc));
}

const char* kAwqConfig = R"({"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 32,
                              "zero_point": true, "version": "gemm", "modules_to_not_convert": null}})";

TEST(Awq, RoundTripAndSpecCheck) {
  NB_SEEDED_RNG(rng);
  TempDir dir;
  std::vector<RawTensor> ts;
  std::vector<std::pair<std::string, Truth>> truths;
  for (auto [out, in] : {std::pair<int64_t, int64_t>{8, 32}, {24, 96}, {40, 64}}) {
    Truth t = random_truth(rng, out, in, 4, 32, false, false, DType::kF16);
    std::string p = strformat("model.layers.1.mlp.experts.3.gate_proj%lld", static_cast<long long>(out));
    add_awq_tensors(p, t, &ts);
    truths.emplace_back(p, std::move(t));
  }
  // Dequantization check of §8: u = 3, uz = 8 → W = -5·s.
  Truth c = random_truth(rng, 8, 32, 4, 32, false, false, DType::kF16);
  std::fill(c.q.begin(), c.q.end(), 3 - 8);
  std::fill(c.z.begin(), c.z.end(), 0);
  std::fill(c.s.begin(), c.s.end(), 0.25f);
  add_awq_tensors("check", c, &ts);
  ts.push_back(raw_float("check.bias", DType::kF16, {8}, std::vector<float>(8, 1.5f)));
  testing::write_checkpoint(dir.path(), ts, kAwqConfig);
  Loaded l = open(dir.path());
  for (const auto& [p, t] : truths) {
    Result<LinearWeight> w = load_linear(l.ck, l.qc, p, t.out, t.in);
    ASSERT_TRUE(w.is_ok()) << w.status().to_string();
    expect_matches_truth(*w->quantized, t);
    EXPECT_EQ(w->quantized->source_format, "awq gemm");
  }
  Result<LinearWeight> w = load_linear(l.ck, l.qc, "check", 8, 32);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  for (float v : dequantize_float(*w->quantized)) ASSERT_EQ(v, -5 * 0.25f);
  ASSERT_FALSE(w->bias.empty());
  EXPECT_EQ(fp16_to_float(w->bias.as<uint16_t>()[3]), 1.5f);
  // Wrong expectations fail naming the tensor.
  Result<LinearWeight> bad = load_linear(l.ck, l.qc, "check", 12, 32);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("out=12 is not a multiple of 8"), std::string::npos) << bad.status().to_string();
  bad = load_linear(l.ck, l.qc, "check", 16, 32);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("check.qweight: expected shape [32, 2]"), std::string::npos)
      << bad.status().to_string();
}

// ---- errors of compressed-tensors checkpoints and the front door ---------------------------------

class CtErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    NB_SEEDED_RNG(rng);
    truth_ = random_truth(rng, 12, 64, 4, 32, false, true, DType::kBF16);
    add_ct_tensors(kP, truth_, DType::kBF16, false, &tensors_);
  }
  // Writes the tensors after `edit` and returns the load error message ("" when it loads).
  std::string load_error(const std::function<void(std::vector<RawTensor>&)>& edit, int64_t out = 12, int64_t in = 64,
                         bool act = true) {
    std::vector<RawTensor> ts = tensors_;
    edit(ts);
    TempDir dir;
    testing::write_checkpoint(dir.path(), ts, ct_config_json(4, 32, false, act));
    Loaded l = open(dir.path());
    Result<LinearWeight> w = load_linear(l.ck, l.qc, kP, out, in);
    return w.is_ok() ? "" : w.status().to_string();
  }
  static void replace(std::vector<RawTensor>& ts, RawTensor t) {
    for (auto& r : ts)
      if (r.name == t.name) r = std::move(t);
  }
  static void drop(std::vector<RawTensor>& ts, const std::string& name) {
    ts.erase(std::remove_if(ts.begin(), ts.end(), [&](const RawTensor& r) { return r.name == name; }), ts.end());
  }
  static constexpr const char* kP = "model.layers.0.mlp.down_proj";
  Truth truth_;
  std::vector<RawTensor> tensors_;
};

#define EXPECT_HAS(haystack, needle) EXPECT_NE((haystack).find(needle), std::string::npos) << (haystack)

TEST_F(CtErrors, TheBaselineLoads) { EXPECT_EQ(load_error([](auto&) {}), ""); }

TEST_F(CtErrors, PackedShape) {
  std::string m = load_error([](auto& ts) {
    replace(ts, raw(std::string(kP) + ".weight_packed", DType::kI32, {12, 9}, std::vector<uint32_t>(108, 0)));
  });
  EXPECT_HAS(m, "model.layers.0.mlp.down_proj.weight_packed: expected shape [12, 8] (out=12, in=64, 8 codes per "
                "int32), got [12, 9]");
  m = load_error([](auto& ts) {
    replace(ts, raw(std::string(kP) + ".weight_packed", DType::kI8, {12, 32}, std::vector<int8_t>(384, 0)));
  });
  EXPECT_HAS(m, "weight_packed: expected dtype I32, got I8");
}

TEST_F(CtErrors, LogicalShapeDisagreesWithTheConfig) {
  std::string m = load_error([](auto&) {}, 12, 128);
  EXPECT_HAS(m, "weight_shape: the model config expects [out, in] = [12, 128], the checkpoint says [12, 64]");
  m = load_error([](auto& ts) {
    replace(ts, raw(std::string(kP) + ".weight_shape", DType::kI64, {3}, std::vector<int64_t>{12, 64, 1}));
  });
  EXPECT_HAS(m, "weight_shape: expected shape [2] ([out, in]), got [3]");
}

TEST_F(CtErrors, Scales) {
  std::string m = load_error([](auto& ts) { drop(ts, std::string(kP) + ".weight_scale"); });
  EXPECT_HAS(m, "tensor 'model.layers.0.mlp.down_proj.weight_scale' not found");
  m = load_error([](auto& ts) {
    replace(ts, raw_float(std::string(kP) + ".weight_scale", DType::kBF16, {12, 3}, std::vector<float>(36, 1.f)));
  });
  EXPECT_HAS(m, "weight_scale: expected shape [12, 2] (out=12, 2 group(s)), got [12, 3]");
  m = load_error([](auto& ts) {
    replace(ts, raw(std::string(kP) + ".weight_scale", DType::kI32, {12, 2}, std::vector<int32_t>(24, 1)));
  });
  EXPECT_HAS(m, "weight_scale: expected dtype BF16 or F16 or F32, got I32");
}

TEST_F(CtErrors, ZeroPoints) {
  std::string m = load_error([](auto& ts) { drop(ts, std::string(kP) + ".weight_zero_point"); });
  EXPECT_HAS(m, "weight_zero_point' not found (the scheme is asymmetric)");
  m = load_error([](auto& ts) {
    replace(ts, raw(std::string(kP) + ".weight_zero_point", DType::kI32, {1, 2}, std::vector<uint32_t>(2, 0)));
  });
  EXPECT_HAS(m, "weight_zero_point: expected shape [2, 2] (out=12, 2 group(s), 8 zero points per int32 packed along "
                "out), got [1, 2]");
  m = load_error([](auto& ts) {
    replace(ts, raw(std::string(kP) + ".weight_zero_point", DType::kI8, {12, 2}, std::vector<int8_t>(24, 9)));
  });
  EXPECT_HAS(m, "zero point 9 out of the int4 range [-8, 7]");
}

TEST_F(CtErrors, GIdx) {
  std::string m = load_error([](auto& ts) { drop(ts, std::string(kP) + ".weight_g_idx"); });
  EXPECT_HAS(m, "weight_g_idx' not found (actorder is 'group')");
  m = load_error([](auto& ts) {
    std::vector<int32_t> g(64, 1);
    g[63] = -1;
    replace(ts, raw(std::string(kP) + ".weight_g_idx", DType::kI32, {64}, g));
  });
  EXPECT_HAS(m, "weight_g_idx: column 63: group -1 out of range [0, 2)");
  m = load_error([](auto& ts) {
    replace(ts, raw(std::string(kP) + ".weight_g_idx", DType::kI32, {63}, std::vector<int32_t>(63, 0)));
  });
  EXPECT_HAS(m, "weight_g_idx: expected shape [64] (one group index per input column), got [63]");
}

TEST_F(CtErrors, PlainVersusQuantizedMismatch) {
  std::string m = load_error([](auto& ts) {
    ts.clear();
    ts.push_back(raw_float(std::string(kP) + ".weight", DType::kBF16, {12, 64}, std::vector<float>(768, 1.f)));
  });
  EXPECT_HAS(m, "holds a plain model.layers.0.mlp.down_proj.weight");
  // Quantized tensors for a module the config ignores.
  std::vector<RawTensor> ts = tensors_;
  TempDir dir;
  testing::write_checkpoint(dir.path(), ts, ct_config_json(4, 32, false, true, "[\"re:.*down_proj\"]"));
  Loaded l = open(dir.path());
  Result<LinearWeight> w = load_linear(l.ck, l.qc, kP, 12, 64);
  ASSERT_FALSE(w.is_ok());
  EXPECT_HAS(w.status().message(), "is stored quantized");
}

TEST_F(CtErrors, Bias) {
  std::string m = load_error([](auto& ts) {
    ts.push_back(raw_float(std::string(kP) + ".bias", DType::kBF16, {13}, std::vector<float>(13, 1.f)));
  });
  EXPECT_HAS(m, "model.layers.0.mlp.down_proj.bias: expected shape [12] (one bias per output feature), got [13]");
}

TEST(PlainWeights, LoadWithBiasAndCheckShapes) {
  TempDir dir;
  std::vector<float> w(6 * 10), b(6);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i) * 0.5f - 7.f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i) + 0.25f;
  testing::write_checkpoint(dir.path(), {raw_float("m.q_proj.weight", DType::kF32, {6, 10}, w),
                                         raw_float("m.q_proj.bias", DType::kBF16, {6}, b)},
                            R"({"architectures": ["Qwen2ForCausalLM"]})");
  Loaded l = open(dir.path());
  EXPECT_EQ(l.qc.method, QuantMethod::kNone);
  Result<LinearWeight> r = load_linear(l.ck, l.qc, "m.q_proj", 6, 10);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_FALSE(r->is_quantized());
  ASSERT_EQ(r->dense.dtype(), DType::kF32);
  EXPECT_EQ(std::vector<float>(r->dense.as<float>(), r->dense.as<float>() + 60), w);
  EXPECT_EQ(bf16_to_float(r->bias.as<uint16_t>()[5]), 5.25f);
  Result<LinearWeight> bad = load_linear(l.ck, l.qc, "m.q_proj", 10, 6);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_HAS(bad.status().message(), "m.q_proj.weight: expected shape [10, 6] ([out, in] from the model config), got [6, 10]");
  Result<LinearWeight> missing = load_linear(l.ck, l.qc, "m.k_proj", 6, 10);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_HAS(missing.status().message(), "tensor 'm.k_proj.weight' not found");
  Result<LinearWeight> half = load_linear(l.ck, l.qc, "m.q_proj", 6, 0);
  EXPECT_FALSE(half.is_ok());
}

}  // namespace
}  // namespace nb::quant
