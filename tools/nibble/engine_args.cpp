#include "tools/nibble/engine_args.h"

#include <cstdlib>

#include "core/log.h"

namespace nb::cli {

Result<engine::EngineOptions> engine_options_from(const Args& args, const std::string& model_dir) {
  engine::EngineOptions o;
  o.model_dir = model_dir;
  o.device = args.get("device", "cpu");
  NB_ASSIGN_OR_RETURN(int64_t max_loras, args.get_int("max-loras", 8));
  if (max_loras < 1 || max_loras > 1024) return invalid_argument(strformat("--max-loras must be in [1, 1024], got %lld", static_cast<long long>(max_loras)));
  o.max_loras = static_cast<int>(max_loras);
  NB_ASSIGN_OR_RETURN(int64_t max_cpu_loras, args.get_int("max-cpu-loras", 0));
  if (max_cpu_loras != 0 && (max_cpu_loras < max_loras || max_cpu_loras > 1 << 20))
    return invalid_argument(strformat("--max-cpu-loras must be 0 (no limit) or at least --max-loras (%lld), got %lld",
                                      static_cast<long long>(max_loras), static_cast<long long>(max_cpu_loras)));
  o.max_cpu_loras = static_cast<int>(max_cpu_loras);
  NB_ASSIGN_OR_RETURN(int64_t max_len, args.get_int("max-model-len", 0));
  if (max_len < 0) return invalid_argument("--max-model-len must be positive");
  o.max_model_len = static_cast<int>(max_len);
  if (args.has("gpu-memory-fraction")) {
    const std::string v = args.get("gpu-memory-fraction", "");
    char* end = nullptr;
    const double f = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !(f > 0 && f <= 1))
      return invalid_argument(strformat("--gpu-memory-fraction expects a number in (0, 1], got '%s'", v.c_str()));
    o.gpu_memory_fraction = f;
  }
  o.cuda_graphs = !args.has("no-cuda-graphs");
  o.reference_kernels = args.has("reference-kernels");
  o.verbose = !args.has("quiet");
  if (args.has("quiet")) set_log_level(LogLevel::kWarn);
  return o;
}

Status load_adapters_from(const Args& args, engine::Engine& engine) {
  for (const std::string& spec : args.get_all("lora")) {
    std::string name, dir;
    size_t eq = spec.find('=');
    if (eq == std::string::npos) {
      dir = spec;
      std::string trimmed = dir;
      while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
      size_t slash = trimmed.find_last_of('/');
      name = slash == std::string::npos ? trimmed : trimmed.substr(slash + 1);
    } else {
      name = spec.substr(0, eq);
      dir = spec.substr(eq + 1);
    }
    if (name.empty() || dir.empty()) return invalid_argument(strformat("--lora expects NAME=DIR, got '%s'", spec.c_str()));
    NB_RETURN_IF_ERROR(engine.load_adapter(name, dir));
  }
  return Status::ok();
}

}  // namespace nb::cli
