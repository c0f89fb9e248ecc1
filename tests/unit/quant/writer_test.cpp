// `nibble quantize` (quantize_checkpoint) and `nibble inspect` (inspect_model) on small generated
// BF16 checkpoints: what is quantized, the config block, sharding, copied files, errors; inspect
// must describe exactly what quantize wrote.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "io/json_util.h"
#include "quant/inspect.h"
#include "quant/quantizer.h"
#include "quant/writer.h"
#include "quant_test_util.h"

namespace nb::quant {
namespace {

using testing::RawTensor;
using testing::raw_float;
using testing::TempDir;

constexpr int64_t kHidden = 64, kInter = 96, kVocab = 40, kLayers = 2, kKv = 32;

std::vector<float> random_values(std::mt19937_64& rng, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = testing::rand_float(rng, -0.5f, 0.5f);
  return v;
}

// A Llama-shaped BF16 checkpoint; with `moe`, layer 1 has two experts, a router and a shared expert gate.
std::vector<RawTensor> llama_tensors(std::mt19937_64& rng, bool moe) {
  std::vector<RawTensor> ts;
  auto add = [&](const std::string& name, Shape shape) {
    ts.push_back(raw_float(name, DType::kBF16, shape, random_values(rng, shape_numel(shape))));
  };
  add("model.embed_tokens.weight", {kVocab, kHidden});
  add("model.norm.weight", {kHidden});
  add("lm_head.weight", {kVocab, kHidden});
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {kHidden});
    add(p + "post_attention_layernorm.weight", {kHidden});
    add(p + "self_attn.q_proj.weight", {kHidden, kHidden});
    add(p + "self_attn.k_proj.weight", {kKv, kHidden});
    add(p + "self_attn.v_proj.weight", {kKv, kHidden});
    add(p + "self_attn.o_proj.weight", {kHidden, kHidden});
    if (moe && l == 1) {
      add(p + "mlp.gate.weight", {2, kHidden});
      add(p + "mlp.shared_expert_gate.weight", {1, kHidden});
      for (int e = 0; e < 2; ++e) {
        const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
        add(x + "gate_proj.weight", {kInter, kHidden});
        add(x + "up_proj.weight", {kInter, kHidden});
        add(x + "down_proj.weight", {kHidden, kInter});
      }
    } else {
      add(p + "mlp.gate_proj.weight", {kInter, kHidden});
      add(p + "mlp.up_proj.weight", {kInter, kHidden});
      add(p + "mlp.down_proj.weight", {kHidden, kInter});
    }
  }
  return ts;
}

const char* kLlamaConfig = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
  "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "vocab_size": 40, "rms_norm_eps": 1e-6, "max_position_embeddings": 128, "torch_dtype": "bfloat16"})";

void write_model(const std::string& dir, const std::vector<RawTensor>& ts, uint64_t shard = 0) {
  testing::write_checkpoint(dir, ts, kLlamaConfig, shard);
  ASSERT_TRUE(write_text_file(dir + "/tokenizer.json", R"({"model": {"type": "BPE"}})").is_ok());
  ASSERT_TRUE(write_text_file(dir + "/generation_config.json", R"({"eos_token_id": 2})").is_ok());
}

QuantizeCheckpointOptions options(int bits, int64_t gs, bool sym) {
  QuantizeCheckpointOptions o;
  o.spec = {bits, gs > 0 ? QuantStrategy::kGroup : QuantStrategy::kChannel, gs > 0 ? gs : 0, sym};
  o.progress = false;
  return o;
}

const RawTensor* find(const std::vector<RawTensor>& ts, const std::string& name) {
  for (const auto& t : ts)
    if (t.name == name) return &t;
  return nullptr;
}

TEST(QuantizeCheckpoint, QuantizesLinearsAndInspectDescribesIt) {
  NB_SEEDED_RNG(rng);
  for (auto [bits, gs, sym] : {std::tuple{4, int64_t{32}, true}, {4, int64_t{-1}, false}, {8, int64_t{32}, false}}) {
    SCOPED_TRACE(::testing::Message() << "int" << bits << " gs " << gs << " sym " << sym);
    TempDir tmp;
    const std::vector<RawTensor> ts = llama_tensors(rng, false);
    write_model(tmp.sub("in"), ts);
    Result<QuantizeCheckpointReport> rep = quantize_checkpoint(tmp.sub("in"), tmp.sub("out"), options(bits, gs, sym));
    ASSERT_TRUE(rep.is_ok()) << rep.status().to_string();
    EXPECT_EQ(rep->quantized, kLayers * 7);
    EXPECT_EQ(rep->ignore, (std::vector<std::string>{"lm_head"}));
    EXPECT_EQ(rep->files, (std::vector<std::string>{"generation_config.json", "tokenizer.json"}));
    EXPECT_TRUE(file_exists(tmp.sub("out/model.safetensors")));
    EXPECT_EQ(*read_text_file(tmp.sub("out/tokenizer.json")), R"({"model": {"type": "BPE"}})");

    // The config block (formats.md §2.1) as the loader reads it.
    Result<std::string> cfg_text = read_text_file(tmp.sub("out/config.json"));
    ASSERT_TRUE(cfg_text.is_ok());
    Json cfg = *parse_json(*cfg_text, "config.json");
    EXPECT_EQ(cfg["architectures"][0], "LlamaForCausalLM");
    const Json& q = cfg["quantization_config"];
    EXPECT_EQ(q["quant_method"], "compressed-tensors");
    EXPECT_EQ(q["format"], "pack-quantized");
    EXPECT_EQ(q["quantization_status"], "compressed");
    EXPECT_EQ(q["config_groups"]["group_0"]["targets"], Json::array({"Linear"}));
    EXPECT_EQ(q["config_groups"]["group_0"]["weights"]["num_bits"], bits);
    EXPECT_EQ(q["config_groups"]["group_0"]["weights"]["symmetric"], sym);
    EXPECT_EQ(q["config_groups"]["group_0"]["weights"]["strategy"], gs > 0 ? "group" : "channel");
    EXPECT_EQ(q["ignore"], Json::array({"lm_head"}));

    // inspect: every module, shape, scheme; totals.
    Result<ModelReport> r = inspect_model(tmp.sub("out"));
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    EXPECT_EQ(r->architecture, "LlamaForCausalLM");
    EXPECT_EQ(r->num_layers, kLayers);
    EXPECT_EQ(r->method, QuantMethod::kCompressedTensors);
    Json j = *parse_json(report_json(*r), "inspect");
    int64_t params = 0;
    for (const auto& t : ts) params += shape_numel(t.shape);
    EXPECT_EQ(j["totals"]["parameters"], params);
    EXPECT_EQ(j["totals"]["quantized_modules"], kLayers * 7);
    EXPECT_EQ(j["totals"]["plain_modules"], 2);  // embed_tokens, lm_head
    int seen = 0;
    for (const Json& m : j["modules"]) {
      const std::string name = m["name"];
      const RawTensor* orig = find(ts, name + ".weight");
      ASSERT_NE(orig, nullptr) << name;
      EXPECT_EQ(m["shape"], Json(orig->shape)) << name;
      const bool plain = name == "lm_head" || name == "model.embed_tokens";
      EXPECT_EQ(m["quantized"], !plain) << name;
      if (plain) {
        EXPECT_EQ(m["dtype"], "BF16");
        continue;
      }
      ++seen;
      EXPECT_EQ(m["bits"], bits);
      EXPECT_EQ(m["group_size"], gs > 0 ? gs : orig->shape[1]);
      EXPECT_EQ(m["strategy"], gs > 0 ? "group" : "channel");
      EXPECT_EQ(m["symmetric"], sym);
      EXPECT_EQ(m["g_idx"], false);
      EXPECT_EQ(m["scale_dtype"], "BF16");
      const int64_t out = orig->shape[0], in = orig->shape[1], G = gs > 0 ? in / gs : 1;
      EXPECT_EQ(m["device_bytes"], out * (bits == 4 ? in / 2 : in) + out * G * 2 + (sym ? 0 : out * G)) << name;
    }
    EXPECT_EQ(seen, kLayers * 7);
    EXPECT_EQ(j["other_tensors"].size(), 1u + 2 * kLayers);  // norms

    // Loading gives back exactly what the quantizer computed from the original weight.
    Result<Checkpoint> ck = Checkpoint::open_dir(tmp.sub("out"));
    Result<QuantConfig> qc = load_quant_config(tmp.sub("out"));
    ASSERT_TRUE(ck.is_ok() && qc.is_ok());
    const RawTensor* down = find(ts, "model.layers.1.mlp.down_proj.weight");
    Result<LinearWeight> w = load_linear(*ck, *qc, "model.layers.1.mlp.down_proj", kHidden, kInter);
    ASSERT_TRUE(w.is_ok()) << w.status().to_string();
    TensorView v{const_cast<uint8_t*>(down->data.data()), DType::kBF16, down->shape, {}, Device::kCpu};
    Result<QuantizedWeight> direct = quantize_rtn(v, options(bits, gs, sym).spec);
    ASSERT_TRUE(direct.is_ok());
    EXPECT_EQ(w->quantized->codes, direct->codes);
    EXPECT_EQ(w->quantized->zeros, direct->zeros);
    EXPECT_EQ(std::memcmp(w->quantized->scales.data(), direct->scales.data(), direct->scales.nbytes()), 0);
    Result<LinearWeight> head = load_linear(*ck, *qc, "lm_head", kVocab, kHidden);
    ASSERT_TRUE(head.is_ok());
    EXPECT_FALSE(head->is_quantized());
    EXPECT_EQ(std::memcmp(head->dense.data(), find(ts, "lm_head.weight")->data.data(), head->dense.nbytes()), 0);
  }
}

TEST(QuantizeCheckpoint, ShardedMoeInputAndOutput) {
  NB_SEEDED_RNG(rng);
  TempDir tmp;
  const std::vector<RawTensor> ts = llama_tensors(rng, true);
  write_model(tmp.sub("in"), ts, /*shard=*/20000);
  ASSERT_TRUE(file_exists(tmp.sub("in/model.safetensors.index.json")));
  QuantizeCheckpointOptions o = options(4, 32, false);
  o.max_shard_bytes = 8000;
  o.ignore = {"re:.*self_attn.k_proj$"};
  Result<QuantizeCheckpointReport> rep = quantize_checkpoint(tmp.sub("in"), tmp.sub("out"), o);
  ASSERT_TRUE(rep.is_ok()) << rep.status().to_string();
  EXPECT_EQ(rep->ignore, (std::vector<std::string>{"lm_head", "re:.*mlp.gate$", "re:.*shared_expert_gate$",
                                                   "re:.*self_attn.k_proj$"}));
  EXPECT_TRUE(file_exists(tmp.sub("out/model.safetensors.index.json")));
  EXPECT_FALSE(file_exists(tmp.sub("out/model.safetensors")));
  Result<ModelReport> r = inspect_model(tmp.sub("out"));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  for (const auto& m : r->modules) {
    const std::string& n = m.layout.module;
    const bool plain = n == "lm_head" || n == "model.embed_tokens" || n.find("k_proj") != std::string::npos ||
                       n.ends_with("mlp.gate") || n.ends_with("shared_expert_gate");
    EXPECT_EQ(m.layout.scheme.has_value(), !plain) << n;
    if (n == "model.layers.1.mlp.experts.1.down_proj") {
      EXPECT_EQ(m.layout.out, kHidden);
      EXPECT_EQ(m.layout.in, kInter);
      EXPECT_FALSE(m.layout.scheme->symmetric);
    }
  }
  Result<Checkpoint> ck = Checkpoint::open_dir(tmp.sub("out"));
  ASSERT_TRUE(ck.is_ok());
  EXPECT_GT(ck->num_files(), 1u);
  Result<QuantConfig> qc = load_quant_config(tmp.sub("out"));
  ASSERT_TRUE(qc.is_ok());
  Result<LinearWeight> e = load_linear(*ck, *qc, "model.layers.1.mlp.experts.1.gate_proj", kInter, kHidden);
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  EXPECT_TRUE(e->is_quantized());
}

TEST(QuantizeCheckpoint, Errors) {
  NB_SEEDED_RNG(rng);
  TempDir tmp;
  write_model(tmp.sub("in"), llama_tensors(rng, false));
  auto err = [&](const std::string& in, const std::string& out, const QuantizeCheckpointOptions& o) {
    Result<QuantizeCheckpointReport> r = quantize_checkpoint(in, out, o);
    EXPECT_FALSE(r.is_ok());
    return r.is_ok() ? std::string() : r.status().to_string();
  };
  // intermediate 96 is not a multiple of 64 → name the tensor and suggest --ignore.
  std::string m = err(tmp.sub("in"), tmp.sub("o1"), options(4, 64, true));
  EXPECT_NE(m.find("model.layers.0.mlp.down_proj.weight: in=96 is not a multiple of the group size 64"),
            std::string::npos) << m;
  EXPECT_NE(m.find("--ignore model.layers.0.mlp.down_proj"), std::string::npos) << m;
  EXPECT_FALSE(std::filesystem::exists(tmp.sub("o1"))) << "nothing is written before the plan is checked";
  // A non-empty output directory.
  std::filesystem::create_directories(tmp.sub("busy"));
  ASSERT_TRUE(write_text_file(tmp.sub("busy/x"), "x").is_ok());
  EXPECT_NE(err(tmp.sub("in"), tmp.sub("busy"), options(4, 32, true)).find("not empty"), std::string::npos);
  // Already quantized input.
  ASSERT_TRUE(quantize_checkpoint(tmp.sub("in"), tmp.sub("q"), options(4, 32, true)).is_ok());
  EXPECT_NE(err(tmp.sub("q"), tmp.sub("q2"), options(4, 32, true)).find("already quantized"), std::string::npos);
  // No config.json / no checkpoint.
  std::filesystem::create_directories(tmp.sub("empty"));
  EXPECT_NE(err(tmp.sub("empty"), tmp.sub("o3"), options(4, 32, true)).find("config.json"), std::string::npos);
  // Bad ignore regex.
  QuantizeCheckpointOptions o = options(4, 32, true);
  o.ignore = {"re:(oops"};
  EXPECT_NE(err(tmp.sub("in"), tmp.sub("o4"), o).find("invalid regular expression"), std::string::npos);
}

// The command line itself, when the nibble binary has been built next to the tests.
TEST(QuantizeCli, QuantizeThenInspectJson) {
  const std::string nibble = std::string(NIBBLE_BINARY_DIR) + "/nibble";
  if (!file_exists(nibble)) GTEST_SKIP() << nibble << " is not built";
  NB_SEEDED_RNG(rng);
  TempDir tmp;
  write_model(tmp.sub("in"), llama_tensors(rng, false));
  const std::string q = nibble + " quantize " + tmp.sub("in") + " " + tmp.sub("out") +
                        " --scheme w8a16 --group-size channel --asym --ignore re:.*o_proj$ --quiet > /dev/null";
  ASSERT_EQ(std::system(q.c_str()), 0) << q;
  const std::string cmd = nibble + " inspect " + tmp.sub("out") + " --json > " + tmp.sub("inspect.json");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  Json j = *parse_json(*read_text_file(tmp.sub("inspect.json")), "inspect.json");
  int quantized = 0;
  for (const Json& m : j["modules"]) {
    const std::string name = m["name"];
    if (!m["quantized"]) continue;
    ++quantized;
    EXPECT_EQ(m["bits"], 8);
    EXPECT_EQ(m["strategy"], "channel");
    EXPECT_EQ(m["symmetric"], false);
    EXPECT_EQ(name.find("o_proj"), std::string::npos);
  }
  EXPECT_EQ(quantized, kLayers * 6);
  const std::string bad = nibble + " quantize " + tmp.sub("in") + " " + tmp.sub("o2") + " --scheme w3a16 2> /dev/null";
  EXPECT_NE(std::system(bad.c_str()), 0);
}

}  // namespace
}  // namespace nb::quant
