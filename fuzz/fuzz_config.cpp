// libFuzzer harness: config.json parsing over the input text.
#include <cstddef>
#include <cstdint>
#include <string>

#include "io/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  nb::Result<nb::ModelConfig> c = nb::parse_model_config(text, "fuzz/config.json");
  if (c.is_ok()) {
    // Everything validate promised: the per-layer queries must be total over the layer range.
    NB_CHECK(c->head_dim > 0 && c->num_attention_heads % c->num_key_value_heads == 0, "validated config is inconsistent");
    const int64_t layers = c->num_hidden_layers < 4096 ? c->num_hidden_layers : 4096;
    for (int l = -1; l <= layers; ++l) NB_CHECK(c->mlp_size(l) > 0, "mlp_size(%d) <= 0", l);
  } else {
    NB_CHECK(!c.status().message().empty(), "an error without a message");
  }
  // quantization_config: the quant/ parser is fuzzed here too once it exists, e.g.
  //   if (c.is_ok() && !c->quantization_config.empty()) (void)nb::parse_quant_config(...);
  // (link nb_quant to fuzz_config in fuzz/CMakeLists.txt).
  return 0;
}
