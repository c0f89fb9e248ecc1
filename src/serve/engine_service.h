// serve::Service over the engine: one thread runs the continuous-batching loop (scheduler picks a
// step, the model runner runs it, the sampler picks tokens, observers get them).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/model_runner.h"
#include "serve/service.h"

namespace nb::serve {

struct EngineServiceOptions {
  engine::EngineOptions engine;   // model_dir, device, max_loras, max_cpu_loras, max_model_len, ...
  int max_num_seqs = 256;         // sequences in one step
  int64_t max_num_batched_tokens = 2048;  // new tokens in one step
  int max_lora_rank = 0;          // adapters of a larger rank are refused (0 = no limit)
  bool prefix_caching = true;
  std::vector<std::pair<std::string, std::string>> loras;  // (name, dir) loaded at start
};

// Loads the model and the adapters, sizes the KV cache, starts the engine thread.
Result<std::unique_ptr<Service>> make_engine_service(const EngineServiceOptions& options);
// The same over a runner made already (benchmarks: random weights); options.engine is not used to
// load anything.
Result<std::unique_ptr<Service>> make_engine_service(std::unique_ptr<engine::ModelRunner> runner,
                                                     const EngineServiceOptions& options);

}  // namespace nb::serve
