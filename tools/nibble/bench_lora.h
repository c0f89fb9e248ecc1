// The LoRA measurements of `nibble bench` (performance.md P5 and P8), on the bench's dummy model:
//   --loras 0,1,8   decode tokens/s per batch size with that many distinct rank-16 adapters on all
//                   seven projections (rows assigned round-robin), next to the no-LoRA figure, plus
//                   "LoRA enabled, base-only rows" (adapters loaded, no row uses one);
//   --adapter-load  time from load_adapter to a usable adapter (loaded, installed in a device slot,
//                   device synchronized) for a rank-16 all-projection PEFT adapter read from the page
//                   cache, median of 5.
// The adapters are real PEFT directories (adapter_config.json + adapter_model.safetensors, bf16,
// random non-zero factors) written to a temporary directory and loaded through the normal loader.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "tools/nibble/cli.h"

namespace nb::cli {

struct LoraBenchOptions {
  std::vector<int64_t> counts;  // --loras: distinct adapters per measurement (0 = no LoRA); empty = off
  bool adapter_load = false;    // --adapter-load
  int rank = 16;
};

// Option names for check_known, and the ones that take no value (for Args::parse).
inline const std::vector<std::string> kLoraBenchOptions = {"loras", "adapter-load"};
inline const std::vector<std::string> kLoraBenchFlags = {"adapter-load"};
inline const char* kLoraBenchHelp =
    "  --loras LIST             P5: decode tokens/s with 0,1,8,... distinct rank-16 adapters on all seven\n"
    "                           projections (rows round-robin), vs no LoRA, plus adapters loaded with\n"
    "                           base-only rows (--max-loras is raised to the largest count)\n"
    "  --adapter-load           P8: load + slot install time of a rank-16 all-projection adapter from the\n"
    "                           page cache (median of 5)\n";

// Parses --loras / --adapter-load and makes room in `options` (slots for the largest count).
Result<LoraBenchOptions> lora_bench_options(const Args& args, engine::EngineOptions& options);

// What the decode measurements share with the rest of the bench.
struct DecodeBenchSetup {
  std::string shape, device;
  std::vector<int64_t> batches;
  int64_t decode_tokens = 32;
};

// A temporary directory removed with everything in it when this goes out of scope.
class TempDir {
 public:
  static Result<TempDir> create(const std::string& tag);
  TempDir() = default;
  TempDir(TempDir&& o) noexcept : path_(std::move(o.path_)) { o.path_.clear(); }
  TempDir& operator=(TempDir&&) = delete;
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Writes a PEFT adapter with rank `rank` on all seven projections of every layer into `dir`: bf16
// factors, random non-zero values of magnitude 0.002-0.02 (small deltas: the dummy model stays finite).
// Returns the size of adapter_model.safetensors in bytes.
Result<uint64_t> write_dummy_adapter(const std::string& dir, const ModelConfig& c, int rank, uint64_t seed);

// Runs the measurements `lora` asks for (nothing when none) and prints markdown tables to stdout.
Status run_lora_benches(engine::Engine& engine, const LoraBenchOptions& lora, const DecodeBenchSetup& setup);

}  // namespace nb::cli
