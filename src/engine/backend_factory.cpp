#include "engine/backend_factory.h"

#include "backends/cpu/cpu_backend.h"
#ifdef NIBBLE_HAVE_CUDA
#include "backends/cuda/cuda_backend.h"
#endif

namespace nb::engine {

Result<std::unique_ptr<ops::Backend>> create_backend(const std::string& name, bool reference) {
  if (name == "cpu") {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c"))
      return unsupported("the CPU backend needs AVX2, FMA and F16C; this processor lacks at least one of them");
    return make_cpu_backend(reference);
  }
#ifdef NIBBLE_HAVE_CUDA
  if (name == "cuda") return make_cuda_backend(0, DType::kBF16);
#endif
  if (name == "cuda")
    return unsupported("the CUDA backend is not built into this binary yet (see docs/status.md)");
  return invalid_argument(strformat("unknown device '%s' (expected cpu or cuda)", name.c_str()));
}

}  // namespace nb::engine
