#include "quant/checks.h"

namespace nb::quant::detail {

Result<const TensorInfo*> require(const Checkpoint& ck, const std::string& name, const std::string& why) {
  if (const TensorInfo* t = ck.find(name)) return t;
  return not_found(strformat("%s: tensor '%s' not found (%s)", ck.location().c_str(), name.c_str(), why.c_str()));
}

Status expect_dtype(const Checkpoint& ck, const TensorInfo& t, std::initializer_list<DType> allowed) {
  std::string names;
  for (DType d : allowed) {
    if (d == t.dtype) return Status::ok();
    names += names.empty() ? dtype_name(d) : std::string(" or ") + dtype_name(d);
  }
  return format_error(strformat("%s: %s: expected dtype %s, got %s", ck.location().c_str(), t.name.c_str(),
                                names.c_str(), dtype_name(t.dtype)));
}

Status expect_float(const Checkpoint& ck, const TensorInfo& t) {
  return expect_dtype(ck, t, {DType::kBF16, DType::kF16, DType::kF32});
}

Status expect_shape(const Checkpoint& ck, const TensorInfo& t, const Shape& shape, const std::string& why) {
  if (t.shape == shape) return Status::ok();
  return format_error(strformat("%s: %s: expected shape %s (%s), got %s", ck.location().c_str(), t.name.c_str(),
                                shape_to_string(shape).c_str(), why.c_str(), shape_to_string(t.shape).c_str()));
}

Status tensor_error(const Checkpoint& ck, const TensorInfo& t, const std::string& message) {
  return format_error(strformat("%s: %s: %s", ck.location().c_str(), t.name.c_str(), message.c_str()));
}

}  // namespace nb::quant::detail
