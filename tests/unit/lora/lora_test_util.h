// Shared helpers for the LoRA tests: a fake base model and adapter directories written with the
// project's safetensors writer plus a hand-written adapter_config.json.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/mmap.h"
#include "io/safetensors.h"
#include "lora/adapter.h"

namespace nb::lora_test {

// 3 decoder layers, hidden 16, vocab 37 (!= hidden, so swapped embedding dims cannot pass),
// 4 query heads of 6 (q out 24 != in 16), GQA k/v out 6, MLP intermediate 40.
inline constexpr int64_t kHidden = 16, kVocab = 37, kQ = 24, kKv = 6, kInter = 40;
inline constexpr int kLayers = 3;

inline std::vector<BaseModule> fake_base() {
  std::vector<BaseModule> base;
  base.push_back(BaseModule::make("model.embed_tokens", BaseModule::Kind::kEmbedding, kHidden, kVocab, -1));
  for (int l = 0; l < kLayers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    base.push_back(BaseModule::make(p + "self_attn.q_proj", BaseModule::Kind::kLinear, kQ, kHidden, l));
    base.push_back(BaseModule::make(p + "self_attn.k_proj", BaseModule::Kind::kLinear, kKv, kHidden, l));
    base.push_back(BaseModule::make(p + "self_attn.v_proj", BaseModule::Kind::kLinear, kKv, kHidden, l));
    base.push_back(BaseModule::make(p + "self_attn.o_proj", BaseModule::Kind::kLinear, kHidden, kQ, l));
    base.push_back(BaseModule::make(p + "mlp.gate_proj", BaseModule::Kind::kLinear, kInter, kHidden, l));
    base.push_back(BaseModule::make(p + "mlp.up_proj", BaseModule::Kind::kLinear, kInter, kHidden, l));
    base.push_back(BaseModule::make(p + "mlp.down_proj", BaseModule::Kind::kLinear, kHidden, kInter, l));
  }
  base.push_back(BaseModule::make("lm_head", BaseModule::Kind::kLinear, kVocab, kHidden, -1));
  return base;
}

// The fake base plus the extra sites of the PEFT fixture model (gen_peft_fixtures.py): a
// `qq_proj` for regex anchoring and MoE-style experts in layer 1 for the lazy layer regex.
inline std::vector<BaseModule> matching_base() {
  std::vector<BaseModule> b = fake_base();
  b.push_back(BaseModule::make("model.layers.0.self_attn.qq_proj", BaseModule::Kind::kLinear, kQ, kHidden, 0));
  b.push_back(BaseModule::make("model.layers.1.mlp.experts.0.gate_proj", BaseModule::Kind::kLinear, 12, kHidden, 1));
  b.push_back(BaseModule::make("model.layers.1.mlp.experts.1.gate_proj", BaseModule::Kind::kLinear, 12, kHidden, 1));
  return b;
}

inline const BaseModule& find_module(const std::vector<BaseModule>& base, const std::string& name) {
  for (const BaseModule& m : base)
    if (m.name == name) return m;
  ADD_FAILURE() << "no base module " << name;
  return base.front();
}

// Fresh, seeded, never-zero values in [-1, -0.05] U [0.05, 1].
inline std::vector<float> random_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> mag(0.05f, 1.0f);
  std::bernoulli_distribution sign(0.5);
  std::vector<float> v(n);
  for (float& x : v) x = sign(rng) ? mag(rng) : -mag(rng);
  return v;
}

inline std::string make_temp_dir(const std::string& tag) {
  std::string tmpl = ::testing::TempDir() + "nb_lora_" + tag + "_XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  char* d = mkdtemp(buf.data());
  EXPECT_NE(d, nullptr) << "mkdtemp " << tmpl;
  return d ? std::string(d) : tmpl;
}

// One tensor to write: values are float; `dtype` is the on-disk dtype.
struct TensorData {
  std::string name;
  Shape shape;
  std::vector<float> values;
  DType dtype = DType::kF32;
};

// Writes an adapter directory: adapter_config.json (given text) and adapter_model.safetensors.
class AdapterWriter {
 public:
  explicit AdapterWriter(const std::string& tag) : dir_(make_temp_dir(tag)) {}
  const std::string& dir() const { return dir_; }

  // Adds a tensor with random values (seeded by the running count) and returns them.
  const TensorData& add(const std::string& name, Shape shape, DType dtype = DType::kF32) {
    size_t n = static_cast<size_t>(shape_numel(shape));
    uint32_t seed = 1000u + static_cast<uint32_t>(tensors_.size());
    tensors_.push_back({name, std::move(shape), random_values(n, seed), dtype});
    return tensors_.back();
  }
  TensorData& add_values(const std::string& name, Shape shape, std::vector<float> values, DType dtype = DType::kF32) {
    tensors_.push_back({name, std::move(shape), std::move(values), dtype});
    return tensors_.back();
  }
  const TensorData& get(const std::string& name) const {
    for (const TensorData& t : tensors_)
      if (t.name == name) return t;
    ADD_FAILURE() << "no tensor " << name;
    return tensors_.front();
  }

  void write(const std::string& config_json, bool write_config = true, bool write_weights = true) {
    if (write_config) {
      ASSERT_TRUE(write_text_file(path_join(dir_, kAdapterConfigFile), config_json).is_ok());
    }
    if (!write_weights) return;
    SafetensorsWriter w(path_join(dir_, kAdapterWeightsFile));
    for (const TensorData& t : tensors_) {
      std::vector<uint8_t> bytes = encode(t);
      Status s = w.add(t.name, t.dtype, t.shape, bytes.data());
      ASSERT_TRUE(s.is_ok()) << s.to_string();
    }
    Status s = w.finish({{"format", "pt"}});
    ASSERT_TRUE(s.is_ok()) << s.to_string();
  }

  static std::vector<uint8_t> encode(const TensorData& t) {
    std::vector<uint8_t> out(dtype_bytes(t.dtype, t.values.size()));
    for (size_t i = 0; i < t.values.size(); ++i) {
      float v = t.values[i];
      switch (t.dtype) {
        case DType::kF32: std::memcpy(out.data() + 4 * i, &v, 4); break;
        case DType::kF64: {
          double d = v;
          std::memcpy(out.data() + 8 * i, &d, 8);
          break;
        }
        case DType::kBF16: {
          uint16_t h = float_to_bf16(v);
          std::memcpy(out.data() + 2 * i, &h, 2);
          break;
        }
        case DType::kF16: {
          uint16_t h = float_to_fp16(v);
          std::memcpy(out.data() + 2 * i, &h, 2);
          break;
        }
        case DType::kI32: {
          int32_t x = static_cast<int32_t>(std::lround(v * 100));
          std::memcpy(out.data() + 4 * i, &x, 4);
          break;
        }
        default: ADD_FAILURE() << "encode: unsupported dtype"; break;
      }
    }
    return out;
  }

 private:
  std::string dir_;
  std::vector<TensorData> tensors_;
};

// "base_model.model." + module + suffix
inline std::string key(const std::string& module, const std::string& suffix) {
  return "base_model.model." + module + suffix;
}

// Adds lora_A [r, in] and lora_B [out, r] for a Linear module.
inline void add_linear_lora(AdapterWriter& w, const BaseModule& m, int64_t r, DType dtype = DType::kF32) {
  w.add(key(m.name, ".lora_A.weight"), {r, m.in}, dtype);
  w.add(key(m.name, ".lora_B.weight"), {m.out, r}, dtype);
}

inline float to_float(const HostTensor& t, size_t i) {
  switch (t.dtype()) {
    case DType::kF32: return t.as<float>()[i];
    case DType::kBF16: return bf16_to_float(t.as<uint16_t>()[i]);
    case DType::kF16: return fp16_to_float(t.as<uint16_t>()[i]);
    default: ADD_FAILURE() << "to_float: dtype"; return 0;
  }
}

}  // namespace nb::lora_test
