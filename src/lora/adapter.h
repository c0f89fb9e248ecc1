// PEFT LoRA adapters (formats.md §6): loading `adapter_config.json` + `adapter_model.safetensors`
// against the base model's own description of its modules, failing closed.
//
// Every tensor must map to a base module that exists, has the right kind (lora_A/lora_B on a
// Linear, lora_embedding_A/B on an Embedding), is targeted by the config, and has exactly the
// shape the config's rank (rank_pattern applied) and the module's logical shape imply. A factor
// without its partner, non-float dtypes and NaN/Inf values are refused. A targeted module with no
// tensors is fine (PEFT may skip modules); a tensor for a module the config does not target is
// not (config and weights disagree). Errors name the adapter, the tensor, expected and actual.
//
// Split vs fused projections: adapters address q_proj/k_proj/v_proj and gate_proj/up_proj one by
// one; this loader keeps them per Hugging Face module and leaves fusing to nn/.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "lora/adapter_config.h"
#include "lora/base_module.h"

namespace nb {

// What one adapter adds to one base module: y += scaling * B(A(x)).
struct LoraModule {
  std::string module;  // base module name
  BaseModule::Kind kind = BaseModule::Kind::kLinear;
  int rank = 0;
  float alpha = 0;
  float scaling = 0;  // alpha / rank, or alpha / sqrt(rank) with use_rslora
  // Linear:    a = lora_A.weight [rank, in] as stored;  b = lora_B.weight [out, rank].
  // Embedding: a = lora_embedding_A TRANSPOSED to [num_embeddings, rank] so one token's row is
  //            contiguous: y[t] += scaling * a[ids[t]] @ b^T;  b = lora_embedding_B [embedding_dim, rank].
  //            (PEFT stores lora_embedding_A as [rank, num_embeddings]: the roles of the two
  //            dimensions are swapped relative to a Linear's lora_A.)
  HostTensor a;
  HostTensor b;
};

struct LoraAdapter {
  std::string name;
  std::string dir;
  AdapterConfig config;
  std::map<std::string, LoraModule> modules;  // by base module name
  // Whole replacement weights (modules_to_save), by base module name, in the Hugging Face weight
  // layout: Linear [out, in] (lm_head: [vocab, hidden]); Embedding [num_embeddings, embedding_dim].
  std::map<std::string, HostTensor> modules_to_save;
  // "<module>.base_layer.weight": PEFT (save_embedding_layers="auto") saves the full base weight of
  // every LoRA-targeted embed_tokens / lm_head, and PEFT's loader copies it into the base layer.
  // Same layouts as modules_to_save. It usually equals the base model's weight; when it does not
  // (resized or retrained vocabulary), the adapter's rows must use it as their base weight, with
  // this adapter's LoRA delta added on top. nn/ decides (compare with the base, or use per adapter).
  std::map<std::string, HostTensor> base_layer_weights;

  size_t bytes() const;  // host memory held by all tensors
  int max_rank() const;  // 0 when the adapter has only modules_to_save
};

inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";

// Loads the adapter in `dir`. `base` lists every module of the base model that may carry LoRA or
// be replaced by modules_to_save. Factors are converted to `dtype` (F32, BF16 or F16).
Result<LoraAdapter> load_adapter(const std::string& name, const std::string& dir, const std::vector<BaseModule>& base,
                                 DType dtype = DType::kF32);

}  // namespace nb
