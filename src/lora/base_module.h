// How the base model describes its LoRA-able sites to the adapter loader. The loader never
// infers a shape from a weight (design.md rules 1 and 4): the model, from its config, lists
// every Linear and Embedding by its Hugging Face module name with its logical shape.
#pragma once

#include <cstdint>
#include <string>

namespace nb {

struct BaseModule {
  enum class Kind { kLinear, kEmbedding };

  std::string name;  // "model.layers.3.self_attn.q_proj", "model.embed_tokens", "lm_head"
  Kind kind = Kind::kLinear;
  // Linear: logical weight [out, in] (never a packed buffer's shape).
  // Embedding: in = num_embeddings (vocab), out = embedding_dim (hidden), as PEFT's
  // LoraLayer sets in_features/out_features for nn.Embedding.
  int64_t out = 0;
  int64_t in = 0;
  int layer = -1;  // decoder layer index; -1 for embed_tokens / lm_head

  bool is_linear() const { return kind == Kind::kLinear; }
  bool is_embedding() const { return kind == Kind::kEmbedding; }
};

// The output projection that PEFT's "all-linear" leaves out (model.get_output_embeddings()).
// Every architecture nibble loads names it "lm_head".
inline bool is_output_head(const BaseModule& m) { return m.is_linear() && m.name == "lm_head"; }

const char* base_module_kind_name(BaseModule::Kind kind);  // "Linear" / "Embedding"

}  // namespace nb
