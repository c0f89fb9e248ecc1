// Shared checks for the format loaders: every message names the checkpoint, the tensor, and
// expected versus actual.
#pragma once

#include <initializer_list>
#include <string>

#include "core/status.h"
#include "io/safetensors.h"

namespace nb::quant::detail {

// The tensor `name`, or a not-found error: "<checkpoint>: tensor 'P.weight_scale' not found (<why>)".
Result<const TensorInfo*> require(const Checkpoint& ck, const std::string& name, const std::string& why);
// "<checkpoint>: P.qweight: expected dtype I32, got F16"
Status expect_dtype(const Checkpoint& ck, const TensorInfo& t, std::initializer_list<DType> allowed);
// BF16, F16 or F32.
Status expect_float(const Checkpoint& ck, const TensorInfo& t);
// "<checkpoint>: P.weight_packed: expected shape [4096, 1792] (out=4096, in=14336, 8 codes per int32), got [...]"
Status expect_shape(const Checkpoint& ck, const TensorInfo& t, const Shape& shape, const std::string& why);
// A format error about tensor `t`: "<checkpoint>: <t.name>: <message>".
Status tensor_error(const Checkpoint& ck, const TensorInfo& t, const std::string& message);

}  // namespace nb::quant::detail
