#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace nb {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_to_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

bool TensorView::is_contiguous() const {
  if (strides.empty()) return true;
  int64_t expect = 1;
  for (int i = rank() - 1; i >= 0; --i) {
    if (shape[static_cast<size_t>(i)] != 1 && strides[static_cast<size_t>(i)] != expect) return false;
    expect *= shape[static_cast<size_t>(i)];
  }
  return true;
}

HostTensor::HostTensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  size_t bytes = nbytes();
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  data_ = std::aligned_alloc(64, rounded);
  if (!data_) throw std::bad_alloc();
  std::memset(data_, 0, rounded);
}

HostTensor::HostTensor(HostTensor&& o) noexcept : data_(o.data_), dtype_(o.dtype_), shape_(std::move(o.shape_)) {
  o.data_ = nullptr;
}

HostTensor& HostTensor::operator=(HostTensor&& o) noexcept {
  if (this != &o) {
    std::free(data_);
    data_ = o.data_;
    dtype_ = o.dtype_;
    shape_ = std::move(o.shape_);
    o.data_ = nullptr;
  }
  return *this;
}

HostTensor::~HostTensor() { std::free(data_); }

}  // namespace nb
