// Non-owning tensor views and a small owning host tensor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace nb {

enum class Device : uint8_t { kCpu, kCuda };

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_to_string(const Shape& shape);  // "[4096, 512]"

// A view: pointer, dtype, shape, strides (in elements), device. Does not own memory.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Shape shape;
  Shape strides;  // empty = contiguous row-major
  Device device = Device::kCpu;

  int64_t numel() const { return shape_numel(shape); }
  int64_t dim(int i) const { return shape[static_cast<size_t>(i < 0 ? i + static_cast<int>(shape.size()) : i)]; }
  int rank() const { return static_cast<int>(shape.size()); }
  size_t nbytes() const { return dtype_bytes(dtype, static_cast<size_t>(numel())); }
  bool is_contiguous() const;
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
};

// Owning, contiguous host tensor (64-byte aligned storage).
class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(DType dtype, Shape shape);
  HostTensor(const HostTensor&) = delete;
  HostTensor& operator=(const HostTensor&) = delete;
  HostTensor(HostTensor&&) noexcept;
  HostTensor& operator=(HostTensor&&) noexcept;
  ~HostTensor();

  TensorView view() const { return TensorView{data_, dtype_, shape_, {}, Device::kCpu}; }
  void* data() const { return data_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return dtype_bytes(dtype_, static_cast<size_t>(numel())); }
  bool empty() const { return data_ == nullptr; }

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  Shape shape_;
};

}  // namespace nb
