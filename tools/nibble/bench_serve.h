// `nibble bench --serve`: the serving path (scheduler + model runner + sampler, serve::EngineService)
// under offered load, next to the engine's own batch decode at the same concurrency.
//   --concurrency LIST   closed-loop streams (default 1,8,32): each keeps one request in flight
//   --serve-loras LIST   distinct rank-16 adapters the streams use round-robin (default 0; 0 = base)
//   --serve-requests N   requests per stream (default 3)
// Each request has --prefill-tokens random prompt tokens and asks for --decode-tokens tokens (greedy,
// no EOS). Reported per (concurrency, adapters): generated tokens/s over the whole run, TTFT and
// time per output token (p50, p99), end-to-end latency p50, and the decode tokens/s of the service
// (concurrency / TPOT p50) against Engine::generate with that many rows in one batch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "tools/nibble/cli.h"

namespace nb::cli {

struct ServeBenchOptions {
  std::vector<int64_t> concurrency;
  std::vector<int64_t> loras;
  int64_t requests_per_stream = 3;
  int64_t prompt_tokens = 128;
  int64_t decode_tokens = 32;
};

inline const std::vector<std::string> kServeBenchOptions = {"concurrency", "serve-loras", "serve-requests"};
inline const std::vector<std::string> kServeBenchFlags = {"serve"};
inline const char* kServeBenchHelp =
    "  --serve                  the serving path (scheduler, model runner, sampler) under load instead of\n"
    "                           the engine measurements: --concurrency LIST (default 1,8,32) closed-loop\n"
    "                           streams, --serve-loras LIST (default 0) adapters used round-robin,\n"
    "                           --serve-requests N per stream (default 3); TTFT, TPOT p50/p99, tokens/s,\n"
    "                           and the engine's batch decode at the same concurrency\n";

Result<ServeBenchOptions> serve_bench_options(const Args& args, int64_t prompt_tokens, int64_t decode_tokens);

// A model of `random`'s shapes: the function builds its own engines from it.
Status run_serve_bench(const engine::EngineOptions& options, const engine::RandomWeights& random,
                       const ServeBenchOptions& bench, const std::string& shape);

}  // namespace nb::cli
