// The CUDA backend: every op of ops.h on one NVIDIA GPU (sm_80 or newer) with BF16 or F16
// activations. Device memory comes from plain cudaMalloc (never managed memory); every op runs on
// the backend's own stream, so results are visible to download() and synchronize().
//
// This header needs no CUDA headers: code above the backend includes it under #ifdef NIBBLE_HAVE_CUDA
// (defined PUBLIC by the nb_cuda library).
#pragma once

#include <memory>

#include "core/status.h"
#include "ops/ops.h"

namespace nb {

// Creates the backend on `device`. Fails (never aborts) when no usable GPU is present, e.g.
// "no usable CUDA device: cudaGetDeviceCount returned 35 (CUDA driver version is insufficient ...)",
// when the device index is out of range, or when its compute capability is below 8.0.
// activation must be DType::kBF16 or DType::kF16.
Result<std::unique_ptr<ops::Backend>> make_cuda_backend(int device = 0, DType activation = DType::kBF16);

}  // namespace nb
