// Loading PEFT adapters: layouts, dtype conversion, and failing closed on every malformed input.
//
// Truths: (1) adapters written by PEFT 0.21.2 (data/peft_*/, gen_peft_fixtures.py) with the LoRA
// deltas PEFT itself computed; (2) adapters built here whose expected layout follows from the
// raw tensors written (y = scaling * A^T[ids] @ B^T for embeddings, formats.md §6.3).
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/mmap.h"
#include "lora/adapter.h"
#include "lora_test_util.h"

namespace nb {
namespace {

using lora_test::AdapterWriter;
using lora_test::fake_base;
using lora_test::find_module;
using lora_test::key;
using lora_test::kHidden;
using lora_test::kVocab;
using lora_test::to_float;

const std::string kAllTargets =
    R"("target_modules":["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj","embed_tokens"])";

LoraAdapter load_ok(const std::string& dir, const std::vector<BaseModule>& base, DType dtype = DType::kF32) {
  Result<LoraAdapter> r = load_adapter("good", dir, base, dtype);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return r.is_ok() ? std::move(r).value() : LoraAdapter{};
}

// Loads and expects failure whose message holds every needle (and names the adapter).
ErrorCode load_err(const std::string& dir, const std::vector<std::string>& needles,
                const std::vector<BaseModule>& base = fake_base()) {
  Result<LoraAdapter> r = load_adapter("bad", dir, base);
  EXPECT_FALSE(r.is_ok()) << "loaded " << dir;
  if (r.is_ok()) return ErrorCode::kOk;
  const std::string& msg = r.status().message();
  EXPECT_NE(msg.find("adapter 'bad'"), std::string::npos) << msg;
  for (const std::string& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "missing '" << n << "' in: " << msg;
  return r.status().code();
}

// y[t] = scaling * (x[t] @ A^T) @ B^T with the loaded layout (a [r, in], b [out, r]).
std::vector<float> linear_delta(const LoraModule& m, const std::vector<float>& x, int64_t in) {
  const int64_t r = m.rank, out = m.b.shape()[0], rows = static_cast<int64_t>(x.size()) / in;
  std::vector<float> y(static_cast<size_t>(rows * out));
  for (int64_t t = 0; t < rows; ++t) {
    std::vector<double> h(static_cast<size_t>(r));
    for (int64_t k = 0; k < r; ++k)
      for (int64_t i = 0; i < in; ++i) h[k] += double(to_float(m.a, k * in + i)) * x[t * in + i];
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0;
      for (int64_t k = 0; k < r; ++k) acc += double(to_float(m.b, o * r + k)) * h[k];
      y[t * out + o] = static_cast<float>(m.scaling * acc);
    }
  }
  return y;
}

// y[t] = scaling * a[ids[t]] @ b^T with the loaded embedding layout (a [vocab, r], b [hidden, r]).
std::vector<float> embedding_delta(const LoraModule& m, const std::vector<int64_t>& ids) {
  const int64_t r = m.rank, hidden = m.b.shape()[0];
  std::vector<float> y;
  for (int64_t id : ids) {
    for (int64_t h = 0; h < hidden; ++h) {
      double acc = 0;
      for (int64_t k = 0; k < r; ++k) acc += double(to_float(m.a, id * r + k)) * to_float(m.b, h * r + k);
      y.push_back(static_cast<float>(m.scaling * acc));
    }
  }
  return y;
}

// |got - want| <= rel_tol * max|want| elementwise.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rel_tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double max_abs = 0;
  for (float w : want) max_abs = std::max(max_abs, double(std::fabs(w)));
  ASSERT_GT(max_abs, 0.0) << what << ": all-zero reference";
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], rel_tol * max_abs) << what << " element " << i;
}

std::vector<float> flatten(const nlohmann::json& rows) {
  std::vector<float> v;
  for (const auto& row : rows)
    for (const auto& x : row) v.push_back(x.get<float>());
  return v;
}

TEST(LoadAdapter, LinearAndEmbeddingFactorsKeepPeftValues) {
  std::vector<BaseModule> base = fake_base();
  AdapterWriter w("layout");
  for (const BaseModule& m : base) {
    if (m.name == "lm_head" || m.name == "model.layers.2.mlp.up_proj") continue;  // targeted but skipped: fine
    if (m.is_embedding()) {
      w.add(key(m.name, ".lora_embedding_A"), {6, kVocab});   // PEFT: [r, num_embeddings]
      w.add(key(m.name, ".lora_embedding_B"), {kHidden, 6});  // PEFT: [embedding_dim, r]
    } else {
      lora_test::add_linear_lora(w, m, m.name.find("k_proj") != std::string::npos ? 4 : 8);
    }
  }
  w.write("{" + kAllTargets + R"(,"r":8,"lora_alpha":16,"rank_pattern":{"k_proj":4,"embed_tokens":6},
          "alpha_pattern":{"o_proj":4}})");
  LoraAdapter a = load_ok(w.dir(), base);
  EXPECT_EQ(a.name, "good");
  EXPECT_EQ(a.modules.size(), 3u * 7u - 1u + 1u);
  EXPECT_FALSE(a.modules.count("model.layers.2.mlp.up_proj"));
  EXPECT_EQ(a.max_rank(), 8);

  const LoraModule& q = a.modules.at("model.layers.1.self_attn.q_proj");
  EXPECT_EQ(q.kind, BaseModule::Kind::kLinear);
  EXPECT_EQ(q.rank, 8);
  EXPECT_FLOAT_EQ(q.scaling, 2.0f);
  EXPECT_EQ(q.a.shape(), (Shape{8, kHidden}));
  EXPECT_EQ(q.b.shape(), (Shape{lora_test::kQ, 8}));
  const auto& raw_a = w.get(key(q.module, ".lora_A.weight")).values;
  const auto& raw_b = w.get(key(q.module, ".lora_B.weight")).values;
  for (size_t i = 0; i < raw_a.size(); ++i) ASSERT_EQ(q.a.as<float>()[i], raw_a[i]);
  for (size_t i = 0; i < raw_b.size(); ++i) ASSERT_EQ(q.b.as<float>()[i], raw_b[i]);
  EXPECT_FLOAT_EQ(a.modules.at("model.layers.0.self_attn.k_proj").scaling, 4.0f);
  EXPECT_FLOAT_EQ(a.modules.at("model.layers.2.self_attn.o_proj").scaling, 0.5f);

  // Embedding: PEFT computes scaling * (A^T[ids] @ B^T) from lora_embedding_A [r, vocab] and
  // lora_embedding_B [hidden, r]. Reference from the raw tensors, compared with the loaded layout.
  const LoraModule& e = a.modules.at("model.embed_tokens");
  EXPECT_EQ(e.kind, BaseModule::Kind::kEmbedding);
  EXPECT_EQ(e.a.shape(), (Shape{kVocab, 6}));
  EXPECT_EQ(e.b.shape(), (Shape{kHidden, 6}));
  EXPECT_FLOAT_EQ(e.scaling, 16.0f / 6.0f);
  const auto& ea = w.get(key(e.module, ".lora_embedding_A")).values;
  const auto& eb = w.get(key(e.module, ".lora_embedding_B")).values;
  std::vector<int64_t> ids = {0, 36, 5, 17, 5, 30};
  std::vector<float> want;
  for (int64_t id : ids)
    for (int64_t h = 0; h < kHidden; ++h) {
      double acc = 0;
      for (int64_t k = 0; k < 6; ++k) acc += double(ea[k * kVocab + id]) * eb[h * 6 + k];
      want.push_back(static_cast<float>(e.scaling * acc));
    }
  expect_close(embedding_delta(e, ids), want, 1e-6, "embedding delta");
  EXPECT_GT(a.bytes(), 0u);
}

TEST(LoadAdapter, ConvertsSourceAndTargetDtypes) {
  std::vector<BaseModule> base = fake_base();
  AdapterWriter w("dtypes");
  const BaseModule& q = find_module(base, "model.layers.0.self_attn.q_proj");
  const BaseModule& v = find_module(base, "model.layers.0.self_attn.v_proj");
  const BaseModule& o = find_module(base, "model.layers.0.self_attn.o_proj");
  lora_test::add_linear_lora(w, q, 4, DType::kBF16);
  lora_test::add_linear_lora(w, v, 4, DType::kF16);
  lora_test::add_linear_lora(w, o, 4, DType::kF64);
  w.write(R"({"target_modules":["q_proj","v_proj","o_proj"],"r":4,"lora_alpha":4})");
  for (DType out : {DType::kF32, DType::kBF16}) {
    LoraAdapter a = load_ok(w.dir(), base, out);
    for (auto [m, src] : {std::pair{&q, DType::kBF16}, std::pair{&v, DType::kF16}, std::pair{&o, DType::kF64}}) {
      const LoraModule& lm = a.modules.at(m->name);
      ASSERT_EQ(lm.a.dtype(), out);
      const auto& raw = w.get(key(m->name, ".lora_A.weight")).values;
      for (size_t i = 0; i < raw.size(); ++i) {
        float stored = round_to_dtype(raw[i], src);  // what the file holds
        ASSERT_EQ(to_float(lm.a, i), round_to_dtype(stored, out)) << m->name << " " << i;
      }
    }
  }
}

TEST(LoadAdapter, AcceptsAdapterNameSegmentsAndUnprefixedKeys) {
  std::vector<BaseModule> base = fake_base();
  AdapterWriter w("keys");
  w.add("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", {4, kHidden});
  w.add("model.layers.0.self_attn.q_proj.lora_B.weight", {lora_test::kQ, 4});
  w.add("base_model.model.model.embed_tokens.lora_embedding_A.default", {4, kVocab});
  w.add("base_model.model.model.embed_tokens.lora_embedding_B.default", {kHidden, 4});
  w.add("base_model.model.lm_head.modules_to_save.default.weight", {kVocab, kHidden});
  w.write(R"({"target_modules":["q_proj","embed_tokens"],"r":4,"lora_alpha":8,"modules_to_save":["lm_head"]})");
  LoraAdapter a = load_ok(w.dir(), base);
  EXPECT_EQ(a.modules.size(), 2u);
  ASSERT_EQ(a.modules_to_save.count("lm_head"), 1u);
  const auto& raw = w.get("base_model.model.lm_head.modules_to_save.default.weight").values;
  const HostTensor& lm = a.modules_to_save.at("lm_head");
  EXPECT_EQ(lm.shape(), (Shape{kVocab, kHidden}));
  for (size_t i = 0; i < raw.size(); ++i) ASSERT_EQ(lm.as<float>()[i], raw[i]);
}

TEST(LoadAdapter, ModulesToSaveLmHeadAndEmbedTokens) {
  std::vector<BaseModule> base = fake_base();
  AdapterWriter w("mts");
  lora_test::add_linear_lora(w, find_module(base, "model.layers.0.self_attn.q_proj"), 4);
  w.add("base_model.model.lm_head.weight", {kVocab, kHidden});
  w.add("base_model.model.model.embed_tokens.weight", {kVocab, kHidden});
  w.write(R"({"target_modules":["q_proj"],"r":4,"lora_alpha":4,"modules_to_save":["lm_head","embed_tokens"]})");
  LoraAdapter a = load_ok(w.dir(), base);
  ASSERT_EQ(a.modules_to_save.size(), 2u);
  for (const char* m : {"lm_head", "model.embed_tokens"}) {
    const HostTensor& t = a.modules_to_save.at(m);
    EXPECT_EQ(t.shape(), (Shape{kVocab, kHidden})) << m;
    const auto& raw = w.get(key(m, ".weight")).values;
    for (size_t i = 0; i < raw.size(); ++i) ASSERT_EQ(t.as<float>()[i], raw[i]) << m;
  }
}

// Adapters written by PEFT: the loaded factors reproduce the deltas PEFT computed.
void check_peft_adapter(const std::string& name, double rel_tol) {
  std::string dir = std::string(NIBBLE_SOURCE_DIR) + "/tests/unit/lora/data/" + name;
  std::vector<BaseModule> base = lora_test::matching_base();
  LoraAdapter a = load_ok(dir, base);
  Result<std::string> text = read_text_file(dir + "/golden.json");
  ASSERT_TRUE(text.is_ok()) << text.status().to_string();
  auto g = nlohmann::json::parse(*text);
  ASSERT_EQ(a.modules.size(), g["linear"].size() + g["embedding"].size());
  for (auto it = g["linear"].begin(); it != g["linear"].end(); ++it) {
    const LoraModule& m = a.modules.at(it.key());
    std::vector<float> x = flatten(it.value()["x"]);
    expect_close(linear_delta(m, x, find_module(base, it.key()).in), flatten(it.value()["delta"]), rel_tol, it.key());
  }
  for (auto it = g["embedding"].begin(); it != g["embedding"].end(); ++it) {
    std::vector<int64_t> ids = it.value()["ids"].get<std::vector<int64_t>>();
    expect_close(embedding_delta(a.modules.at(it.key()), ids), flatten(it.value()["delta"]), rel_tol, it.key());
    // PEFT saved the embedding's base weight alongside (save_embedding_layers).
    ASSERT_EQ(a.base_layer_weights.count(it.key()), 1u);
    EXPECT_EQ(a.base_layer_weights.at(it.key()).shape(), (Shape{kVocab, kHidden}));
  }
  ASSERT_EQ(a.modules_to_save.size(), g["modules_to_save"].size());
  for (auto it = g["modules_to_save"].begin(); it != g["modules_to_save"].end(); ++it) {
    const HostTensor& wt = a.modules_to_save.at(it.key());  // [vocab, hidden] either way
    const int64_t cols = wt.shape()[1];
    std::vector<float> got;
    if (it.value().contains("ids")) {  // embedding: row lookup
      for (int64_t id : it.value()["ids"].get<std::vector<int64_t>>())
        for (int64_t c = 0; c < cols; ++c) got.push_back(to_float(wt, id * cols + c));
    } else {  // linear: x @ W^T
      std::vector<float> x = flatten(it.value()["x"]);
      for (size_t t = 0; t < x.size() / cols; ++t)
        for (int64_t o = 0; o < wt.shape()[0]; ++o) {
          double acc = 0;
          for (int64_t c = 0; c < cols; ++c) acc += double(to_float(wt, o * cols + c)) * x[t * cols + c];
          got.push_back(static_cast<float>(acc));
        }
    }
    expect_close(got, flatten(it.value()["y"]), rel_tol, it.key());
  }
}

TEST(LoadAdapter, PeftWrittenF32AdapterReproducesPeftDeltas) { check_peft_adapter("peft_full_f32", 1e-5); }
// PEFT computed in bf16; the loader keeps the exact bf16 values, so the difference is PEFT's rounding.
TEST(LoadAdapter, PeftWrittenBf16RsLoraAdapterReproducesPeftDeltas) { check_peft_adapter("peft_rslora_bf16", 2e-2); }

// ---- failing closed --------------------------------------------------------------------------

const char* kQOnly = R"({"target_modules":["q_proj"],"r":8,"lora_alpha":16})";
const std::string kQ0 = "model.layers.0.self_attn.q_proj";

TEST(LoadAdapterErrors, WrongRank) {
  AdapterWriter w("rank");
  w.add(key(kQ0, ".lora_A.weight"), {4, kHidden});
  w.add(key(kQ0, ".lora_B.weight"), {lora_test::kQ, 4});
  w.write(kQOnly);
  load_err(w.dir(), {key(kQ0, ".lora_A.weight"), "expected shape [8, 16]", "rank 8 from r", "got [4, 16]"});
}

TEST(LoadAdapterErrors, WrongRankFromRankPattern) {
  AdapterWriter w("rank_pattern");
  lora_test::add_linear_lora(w, find_module(fake_base(), kQ0), 8);
  w.write(R"({"target_modules":["q_proj"],"r":8,"rank_pattern":{"layers.0.self_attn.q_proj":2}})");
  load_err(w.dir(), {"expected shape [2, 16]", "rank_pattern key 'layers.0.self_attn.q_proj'", "got [8, 16]"});
}

TEST(LoadAdapterErrors, TransposedA) {
  AdapterWriter w("transposed");
  w.add(key(kQ0, ".lora_A.weight"), {kHidden, 8});
  w.add(key(kQ0, ".lora_B.weight"), {lora_test::kQ, 8});
  w.write(kQOnly);
  load_err(w.dir(), {key(kQ0, ".lora_A.weight"), "expected shape [8, 16]", "got [16, 8] (transposed?)"});
}

TEST(LoadAdapterErrors, WrongOutDimensionOnGqaProjection) {
  AdapterWriter w("gqa");
  const std::string k0 = "model.layers.0.self_attn.k_proj";
  w.add(key(k0, ".lora_A.weight"), {8, kHidden});
  w.add(key(k0, ".lora_B.weight"), {lora_test::kQ, 8});  // q's out, not k's
  w.write(R"({"target_modules":["k_proj"],"r":8})");
  load_err(w.dir(), {key(k0, ".lora_B.weight"), "expected shape [6, 8]", "got [24, 8]"});
}

TEST(LoadAdapterErrors, MissingBAndMissingA) {
  AdapterWriter w("missing_b");
  w.add(key(kQ0, ".lora_A.weight"), {8, kHidden});
  w.write(kQOnly);
  load_err(w.dir(), {key(kQ0, ".lora_A.weight"), "has lora_A but no lora_B"});
  AdapterWriter w2("missing_a");
  w2.add(key("model.embed_tokens", ".lora_embedding_B"), {kHidden, 8});
  w2.write(R"({"target_modules":["embed_tokens"],"r":8})");
  load_err(w2.dir(), {"lora_embedding_B", "has lora_embedding_B but no lora_embedding_A"});
}

TEST(LoadAdapterErrors, UnknownModule) {
  AdapterWriter w("unknown");
  lora_test::add_linear_lora(w, BaseModule::make("model.layers.7.self_attn.q_proj", BaseModule::Kind::kLinear, 24, 16, 7), 8);
  w.write(kQOnly);
  load_err(w.dir(), {"model.layers.7.self_attn.q_proj", "is not a LoRA-able module of the base model"});
}

TEST(LoadAdapterErrors, TensorForNonTargetedModule) {
  AdapterWriter w("untargeted");
  lora_test::add_linear_lora(w, find_module(fake_base(), kQ0), 8);
  lora_test::add_linear_lora(w, find_module(fake_base(), "model.layers.0.self_attn.v_proj"), 8);
  w.write(kQOnly);
  load_err(w.dir(), {"model.layers.0.self_attn.v_proj", "is not targeted", "['q_proj']"});
}

TEST(LoadAdapterErrors, EmbeddingFactorOnLinearAndLinearFactorOnEmbedding) {
  AdapterWriter w("emb_on_linear");
  w.add(key(kQ0, ".lora_embedding_A"), {8, kHidden});
  w.add(key(kQ0, ".lora_embedding_B"), {lora_test::kQ, 8});
  w.write(kQOnly);
  load_err(w.dir(), {key(kQ0, ".lora_embedding_A"), "a lora_embedding_A factor", "is a Linear"});
  AdapterWriter w2("linear_on_emb");
  w2.add(key("model.embed_tokens", ".lora_A.weight"), {8, kVocab});
  w2.add(key("model.embed_tokens", ".lora_B.weight"), {kHidden, 8});
  w2.write(R"({"target_modules":["embed_tokens"],"r":8})");
  load_err(w2.dir(), {"model.embed_tokens.lora_A.weight", "is an Embedding"});
}

TEST(LoadAdapterErrors, EmbeddingFactorsReadBackwards) {
  // Written with Linear-style roles (A [vocab, r], B [r, hidden]): must be refused, not reinterpreted.
  AdapterWriter w("emb_backwards");
  w.add(key("model.embed_tokens", ".lora_embedding_A"), {kVocab, 8});
  w.add(key("model.embed_tokens", ".lora_embedding_B"), {8, kHidden});
  w.write(R"({"target_modules":["embed_tokens"],"r":8})");
  load_err(w.dir(), {"lora_embedding_A", "expected shape [8, 37]", "got [37, 8] (transposed?)"});
  AdapterWriter w2("emb_b_backwards");
  w2.add(key("model.embed_tokens", ".lora_embedding_A"), {8, kVocab});
  w2.add(key("model.embed_tokens", ".lora_embedding_B"), {8, kHidden});
  w2.write(R"({"target_modules":["embed_tokens"],"r":8})");
  load_err(w2.dir(), {"lora_embedding_B", "expected shape [16, 8]", "got [8, 16] (transposed?)"});
}

TEST(LoadAdapterErrors, RefusedConfigs) {
  struct Case {
    const char* config;
    const char* needle;
  };
  const Case cases[] = {
      {R"({"target_modules":["q_proj"],"r":8,"use_dora":true})", "DoRA"},
      {R"({"target_modules":["q_proj"],"r":8,"bias":"all"})", "bias='all' trains base biases, not supported"},
      {R"({"peft_type":"IA3","target_modules":["q_proj"]})", "only LORA adapters"},
      {R"({"target_modules":["q_proj"],"r":8)", "invalid JSON"},
  };
  for (const Case& c : cases) {
    AdapterWriter w("config");
    lora_test::add_linear_lora(w, find_module(fake_base(), kQ0), 8);
    w.write(c.config);
    load_err(w.dir(), {"adapter_config.json", c.needle});
  }
}

TEST(LoadAdapterErrors, MissingFiles) {
  AdapterWriter no_config("no_config");
  lora_test::add_linear_lora(no_config, find_module(fake_base(), kQ0), 8);
  no_config.write(kQOnly, /*write_config=*/false);
  EXPECT_EQ(load_err(no_config.dir(), {"adapter_config.json", "not found"}), ErrorCode::kNotFound);

  AdapterWriter no_weights("no_weights");
  no_weights.write(kQOnly, true, /*write_weights=*/false);
  EXPECT_EQ(load_err(no_weights.dir(), {"adapter_model.safetensors", "not found"}), ErrorCode::kNotFound);
  ASSERT_TRUE(write_text_file(path_join(no_weights.dir(), "adapter_model.bin"), "pickle").is_ok());
  EXPECT_EQ(load_err(no_weights.dir(), {"adapter_model.bin", "not supported"}), ErrorCode::kUnsupported);

  load_err("/nonexistent/nibble/adapter", {"/nonexistent/nibble/adapter", "not found"});
}

TEST(LoadAdapterErrors, NonFiniteValues) {
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    AdapterWriter w("nan");
    w.add(key(kQ0, ".lora_A.weight"), {8, kHidden});
    std::vector<float> b = lora_test::random_values(static_cast<size_t>(lora_test::kQ * 8), 5);
    b[3 * 8 + 5] = bad;
    w.add_values(key(kQ0, ".lora_B.weight"), {lora_test::kQ, 8}, b, DType::kBF16);
    w.write(kQOnly);
    load_err(w.dir(), {key(kQ0, ".lora_B.weight"), "non-finite", "[3, 5]"});
  }
}

TEST(LoadAdapterErrors, NonFloatDtypeAndWrongRankTensor) {
  AdapterWriter w("int");
  w.add(key(kQ0, ".lora_A.weight"), {8, kHidden}, DType::kI32);
  w.add(key(kQ0, ".lora_B.weight"), {lora_test::kQ, 8});
  w.write(kQOnly);
  load_err(w.dir(), {key(kQ0, ".lora_A.weight"), "dtype I32 is not a float type"});
  AdapterWriter w3("3d");
  w3.add(key(kQ0, ".lora_A.weight"), {1, 8, kHidden});
  w3.add(key(kQ0, ".lora_B.weight"), {lora_test::kQ, 8});
  w3.write(kQOnly);
  load_err(w3.dir(), {key(kQ0, ".lora_A.weight"), "expected a 2-D tensor, got shape [1, 8, 16]"});
}

TEST(LoadAdapterErrors, UnsupportedLoraTensors) {
  for (const char* extra : {".lora_B.bias", ".lora_magnitude_vector"}) {
    AdapterWriter w("extra");
    lora_test::add_linear_lora(w, find_module(fake_base(), kQ0), 8);
    w.add(key(kQ0, extra), {lora_test::kQ});
    w.write(kQOnly);
    load_err(w.dir(), {key(kQ0, extra), "unsupported LoRA tensor"});
  }
}

TEST(LoadAdapterErrors, ModulesToSaveProblems) {
  // Listed but absent.
  AdapterWriter w("mts_missing");
  lora_test::add_linear_lora(w, find_module(fake_base(), kQ0), 8);
  w.write(R"({"target_modules":["q_proj"],"r":8,"modules_to_save":["lm_head"]})");
  load_err(w.dir(), {"'lm_head' is in modules_to_save", "no 'lm_head.weight'"});
  // Wrong shape (transposed).
  AdapterWriter w2("mts_shape");
  lora_test::add_linear_lora(w2, find_module(fake_base(), kQ0), 8);
  w2.add("base_model.model.lm_head.weight", {kHidden, kVocab});
  w2.write(R"({"target_modules":["q_proj"],"r":8,"modules_to_save":["lm_head"]})");
  load_err(w2.dir(), {"base_model.model.lm_head.weight", "expected shape [37, 16]", "got [16, 37] (transposed?)"});
  // A whole weight the config does not list.
  AdapterWriter w3("mts_unlisted");
  lora_test::add_linear_lora(w3, find_module(fake_base(), kQ0), 8);
  w3.add("base_model.model.lm_head.weight", {kVocab, kHidden});
  w3.write(kQOnly);
  load_err(w3.dir(), {"base_model.model.lm_head.weight", "not in modules_to_save"});
  // Neither a factor nor a weight.
  AdapterWriter w4("junk");
  lora_test::add_linear_lora(w4, find_module(fake_base(), kQ0), 8);
  w4.add("base_model.model.model.norm.scale", {kHidden});
  w4.write(kQOnly);
  load_err(w4.dir(), {"base_model.model.model.norm.scale", "neither a LoRA factor"});
}

TEST(LoadAdapterErrors, BaseLayerWeightRules) {
  // PEFT's save_embedding_layers output is accepted only beside that module's own LoRA factors.
  AdapterWriter w("base_layer_alone");
  lora_test::add_linear_lora(w, find_module(fake_base(), kQ0), 8);
  w.add("base_model.model.model.embed_tokens.base_layer.weight", {kVocab, kHidden});
  w.write(R"({"target_modules":["q_proj","embed_tokens"],"r":8})");
  load_err(w.dir(), {"embed_tokens.base_layer.weight", "has no LoRA factors"});
  AdapterWriter w2("base_layer_shape");
  w2.add(key("model.embed_tokens", ".lora_embedding_A"), {8, kVocab});
  w2.add(key("model.embed_tokens", ".lora_embedding_B"), {kHidden, 8});
  w2.add("base_model.model.model.embed_tokens.base_layer.weight", {kHidden, kVocab});
  w2.write(R"({"target_modules":["embed_tokens"],"r":8})");
  load_err(w2.dir(), {"embed_tokens.base_layer.weight", "expected shape [37, 16]"});
}

}  // namespace
}  // namespace nb
