// Options shared by the commands that run a model (generate, logits, bench, perplexity).
#pragma once

#include <string>
#include <vector>

#include "engine/engine.h"
#include "tools/nibble/cli.h"

namespace nb::cli {

// Option names understood by engine_options_from / load_adapters_from.
inline const std::vector<std::string> kEngineOptions = {"device", "max-loras", "max-cpu-loras", "lora",
                                                        "reference-kernels", "quiet", "max-model-len",
                                                        "gpu-memory-fraction", "no-cuda-graphs"};
inline const char* kEngineOptionsHelp =
    "  --device cpu|cuda        where to run (default cpu)\n"
    "  --lora NAME=DIR          load a PEFT adapter under NAME (repeatable)\n"
    "  --max-loras N            adapter slots on the device: distinct adapters in one batch (default 8)\n"
    "  --max-cpu-loras N        adapters kept loaded in host memory, least recently used evicted and\n"
    "                           reloaded from disk when needed (default 0 = no limit; else >= --max-loras)\n"
    "  --max-model-len N        longest sequence (default min(max_position_embeddings, 4096))\n"
    "  --gpu-memory-fraction F  size the KV cache to fill this fraction of GPU memory (default: room for\n"
    "                           8 sequences of --max-model-len)\n"
    "  --no-cuda-graphs         run every decode step op by op (default: recorded as CUDA graphs)\n"
    "  --reference-kernels      CPU: run the scalar reference ops (slow; for checking)\n"
    "  --quiet                  no progress output\n";

Result<engine::EngineOptions> engine_options_from(const Args& args, const std::string& model_dir);
// Loads every --lora NAME=DIR (a bare DIR is named after its folder).
Status load_adapters_from(const Args& args, engine::Engine& engine);

}  // namespace nb::cli
