// Options shared by the commands that run a model (generate, logits, bench, perplexity).
#pragma once

#include <string>
#include <vector>

#include "engine/engine.h"
#include "tools/nibble/cli.h"

namespace nb::cli {

// Option names understood by engine_options_from / load_adapters_from.
inline const std::vector<std::string> kEngineOptions = {"device", "max-loras", "lora", "reference-kernels", "quiet",
                                                        "max-model-len"};
inline const char* kEngineOptionsHelp =
    "  --device cpu|cuda        where to run (default cpu)\n"
    "  --lora NAME=DIR          load a PEFT adapter under NAME (repeatable)\n"
    "  --max-loras N            adapter slots (default 8)\n"
    "  --max-model-len N        longest sequence (default min(max_position_embeddings, 4096))\n"
    "  --reference-kernels      CPU: run the scalar reference ops (slow; for checking)\n"
    "  --quiet                  no progress output\n";

Result<engine::EngineOptions> engine_options_from(const Args& args, const std::string& model_dir);
// Loads every --lora NAME=DIR (a bare DIR is named after its folder).
Status load_adapters_from(const Args& args, engine::Engine& engine);

}  // namespace nb::cli
