// How the base model describes its LoRA-able sites to the adapter loader. The loader never
// infers a shape from a weight (design.md rules 1 and 4): the model, from its config, lists
// every Linear and Embedding by its Hugging Face module name with its logical shape.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nb {

// Where the factors of a fused 3-D expert parameter land: expert e's rows [offset, offset + rows)
// of the parameter's output belong to the per-expert Linear `prefix + e + "." + name`
// (e.g. prefix "model.layers.1.mlp.experts.", name "gate_proj").
struct ExpertSlice {
  std::string name;
  int64_t rows = 0;
};

struct BaseModule {
  // kExpertParam: one fused 3-D expert parameter of transformers 5 (`mlp.experts.gate_up_proj`
  // [E, 2I, H], `mlp.experts.down_proj` [E, H, I]) that PEFT targets through target_parameters.
  enum class Kind { kLinear, kEmbedding, kExpertParam };

  std::string name;  // "model.layers.3.self_attn.q_proj", "model.embed_tokens", "lm_head"
  Kind kind = Kind::kLinear;
  // Linear: logical weight [out, in] (never a packed buffer's shape).
  // Embedding: in = num_embeddings (vocab), out = embedding_dim (hidden), as PEFT's
  // LoraLayer sets in_features/out_features for nn.Embedding.
  int64_t out = 0;
  int64_t in = 0;
  int layer = -1;  // decoder layer index; -1 for embed_tokens / lm_head

  // kExpertParam only. name = "<experts module>.<parameter>" (PEFT's key for target_parameters,
  // e.g. "model.layers.1.mlp.experts.gate_up_proj"); out/in = one expert's logical [out, in] (the
  // 3-D tensor is [E, out, in]); the adapter tensors live under `experts_module`, nested one
  // ".base_layer" deeper for each parameter of that module wrapped after this one (PEFT wraps the
  // module's parameters in `param_index` order, 0 = innermost); its per-expert factors are split
  // into the per-expert Linears `expert_prefix + e + "." + slice.name`, slices in output order.
  int64_t num_experts = 0;
  std::string experts_module;  // "model.layers.1.mlp.experts"
  int param_index = 0;         // order of the parameter within the experts module
  std::string expert_prefix;   // "model.layers.1.mlp.experts."
  std::vector<ExpertSlice> slices;

  bool is_linear() const { return kind == Kind::kLinear; }
  bool is_embedding() const { return kind == Kind::kEmbedding; }
  bool is_expert_param() const { return kind == Kind::kExpertParam; }

  // A Linear or Embedding site (the common case).
  static BaseModule make(std::string name, Kind kind, int64_t out, int64_t in, int layer) {
    BaseModule m;
    m.name = std::move(name);
    m.kind = kind;
    m.out = out;
    m.in = in;
    m.layer = layer;
    return m;
  }
};

// The output projection that PEFT's "all-linear" leaves out (model.get_output_embeddings()).
// Every architecture nibble loads names it "lm_head".
inline bool is_output_head(const BaseModule& m) { return m.is_linear() && m.name == "lm_head"; }

const char* base_module_kind_name(BaseModule::Kind kind);  // "Linear" / "Embedding"

}  // namespace nb
