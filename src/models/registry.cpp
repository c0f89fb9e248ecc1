// config.json `architectures` -> the architecture's spec -> a loaded model.
#include <cmath>

#include "core/log.h"
#include "models/architectures.h"
#include "nn/checkpoint_loader.h"

namespace nb::models {

Result<DecoderSpec> dense_spec_from_config(const ModelConfig& c) {
  DecoderSpec s;
  s.vocab = c.vocab_size;
  s.hidden = c.hidden_size;
  s.intermediate = c.intermediate_size;
  s.num_layers = static_cast<int>(c.num_hidden_layers);
  s.rms_eps = static_cast<float>(c.rms_norm_eps);
  s.tie_embeddings = c.tie_word_embeddings;
  s.attention.hidden = c.hidden_size;
  s.attention.num_heads = static_cast<int>(c.num_attention_heads);
  s.attention.num_kv_heads = static_cast<int>(c.num_key_value_heads);
  s.attention.head_dim = static_cast<int>(c.head_dim);
  s.attention.rms_eps = static_cast<float>(c.rms_norm_eps);
  nn::RopeConfig& r = s.rope;
  r.type = c.rope_scaling.type;
  r.theta = c.rope_theta;
  r.rotary_dim = static_cast<int>(c.rotary_dim > 0 ? c.rotary_dim : c.head_dim);
  r.max_position_embeddings = static_cast<int>(c.max_position_embeddings);
  r.factor = c.rope_scaling.factor;
  r.low_freq_factor = c.rope_scaling.low_freq_factor;
  r.high_freq_factor = c.rope_scaling.high_freq_factor;
  r.original_max_position_embeddings = static_cast<int>(c.rope_scaling.original_max_position_embeddings);
  r.beta_fast = c.rope_scaling.beta_fast;
  r.beta_slow = c.rope_scaling.beta_slow;
  r.mscale = c.rope_scaling.mscale;
  r.mscale_all_dim = c.rope_scaling.mscale_all_dim;
  r.attention_factor = c.rope_scaling.attention_factor;
  r.truncate = c.rope_scaling.truncate;
  r.neox = !c.rope_interleave;
  return s;
}

nn::MoeSpec moe_spec_from_config(const ModelConfig& c) {
  nn::MoeSpec m;
  m.hidden = c.hidden_size;
  m.intermediate = c.moe_intermediate_size;
  m.shared_intermediate = c.shared_expert_intermediate_size;
  m.num_experts = static_cast<int>(c.num_experts);
  m.top_k = static_cast<int>(c.num_experts_per_tok);
  m.route.num_experts = m.num_experts;
  m.route.top_k = m.top_k;
  m.route.scoring = ops::MoeScoring::kSoftmax;
  m.route.renormalize = c.norm_topk_prob;
  return m;
}

namespace {

using SpecFn = Result<DecoderSpec> (*)(const ModelConfig&);

Result<SpecFn> spec_for(Arch arch) {
  switch (arch) {
    case Arch::kLlama: return &llama_spec;
    case Arch::kMistral: return &mistral_spec;
    case Arch::kQwen2: return &qwen2_spec;
    case Arch::kQwen3: return &qwen3_spec;
    case Arch::kMixtral: return &mixtral_spec;
    case Arch::kQwen2Moe: return &qwen2_moe_spec;
    case Arch::kQwen3Moe: return &qwen3_moe_spec;
    case Arch::kDeepseekV3: return &deepseek_v3_spec;
  }
  return unsupported(strformat("architecture %s has no forward pass", arch_name(arch)));
}

}  // namespace

Result<std::unique_ptr<Model>> load_model(const std::string& model_dir, ops::Backend& backend, const LoadOptions& options) {
  NB_ASSIGN_OR_RETURN(ModelConfig config, load_model_config(model_dir));
  NB_ASSIGN_OR_RETURN(SpecFn spec_fn, spec_for(config.arch));
  NB_ASSIGN_OR_RETURN(DecoderSpec spec, spec_fn(config));
  NB_ASSIGN_OR_RETURN(auto loader, nn::CheckpointLoader::open(model_dir, config.quantization_config, backend));
  auto model = std::make_unique<Decoder>(std::move(config), std::move(spec));
  NB_RETURN_IF_ERROR(model->load(*loader, options.verbose));
  return std::unique_ptr<Model>(std::move(model));
}

Result<std::unique_ptr<Model>> make_dummy_model(const ModelConfig& config, const nn::DummyWeights& weights,
                                                ops::Backend& backend, uint64_t* linear_bytes,
                                                double* convert_seconds, double* generate_seconds) {
  NB_ASSIGN_OR_RETURN(SpecFn spec_fn, spec_for(config.arch));
  NB_ASSIGN_OR_RETURN(DecoderSpec spec, spec_fn(config));
  nn::DummyLoader loader(backend, weights);
  loader.set_tied(config.tie_word_embeddings);
  auto model = std::make_unique<Decoder>(config, std::move(spec));
  NB_RETURN_IF_ERROR(model->load(loader, false));
  if (linear_bytes) *linear_bytes = loader.linear_bytes();
  if (convert_seconds) *convert_seconds = loader.convert_seconds();
  if (generate_seconds) *generate_seconds = loader.generate_seconds();
  return std::unique_ptr<Model>(std::move(model));
}

}  // namespace nb::models
