// Backends by name: "cpu" always; "cuda" when built with CUDA and a usable GPU is present.
#pragma once

#include <memory>
#include <string>

#include "ops/ops.h"

namespace nb::engine {

// reference: on the CPU, run the scalar reference ops (slow; for checking).
Result<std::unique_ptr<ops::Backend>> create_backend(const std::string& name, bool reference = false);

}  // namespace nb::engine
