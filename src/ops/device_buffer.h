// RAII device memory from a Backend, and a typed view helper.
#pragma once

#include <cstddef>
#include <utility>

#include "ops/ops.h"

namespace nb::ops {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Backend& backend, size_t bytes) : backend_(&backend), bytes_(bytes) {
    ptr_ = bytes ? backend.alloc(bytes) : nullptr;
  }
  // A buffer, or an out-of-memory error naming the size and what the device has free.
  static Result<DeviceBuffer> create(Backend& backend, size_t bytes) {
    DeviceBuffer b;
    b.backend_ = &backend;
    if (bytes == 0) return b;
    b.ptr_ = backend.try_alloc(bytes);
    if (!b.ptr_) {
      size_t free_b = 0, total_b = 0;
      const bool known = backend.device_memory(&free_b, &total_b);
      return out_of_range(strformat("out of %s memory: %.3f GiB requested%s", backend.name().c_str(),
                                    static_cast<double>(bytes) / 1073741824.0,
                                    known ? strformat(", %.3f GiB free of %.3f GiB", free_b / 1073741824.0,
                                                      total_b / 1073741824.0).c_str()
                                          : ""));
    }
    b.bytes_ = bytes;
    return b;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      backend_ = o.backend_;
      ptr_ = o.ptr_;
      bytes_ = o.bytes_;
      o.ptr_ = nullptr;
      o.bytes_ = 0;
    }
    return *this;
  }
  ~DeviceBuffer() { reset(); }

  void reset() {
    if (ptr_ && backend_) backend_->dealloc(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* data() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  // A view of the buffer with the given dtype and shape (must fit).
  TensorView view(DType dtype, Shape shape) const {
    TensorView v{ptr_, dtype, std::move(shape), {}, backend_ ? backend_->device() : Device::kCpu};
    NB_CHECK(v.nbytes() <= bytes_, "view of %zu bytes over a buffer of %zu", v.nbytes(), bytes_);
    return v;
  }

 private:
  Backend* backend_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Uploads a host array into a new device buffer.
inline DeviceBuffer upload_buffer(Backend& backend, const void* src, size_t bytes) {
  DeviceBuffer buf(backend, bytes);
  if (bytes) backend.upload(buf.data(), src, bytes);
  return buf;
}

// The same, with out-of-memory as an error.
inline Result<DeviceBuffer> try_upload_buffer(Backend& backend, const void* src, size_t bytes) {
  NB_ASSIGN_OR_RETURN(DeviceBuffer buf, DeviceBuffer::create(backend, bytes));
  if (bytes) backend.upload(buf.data(), src, bytes);
  return buf;
}

}  // namespace nb::ops

namespace nb::ops {

// A device buffer with its dtype and shape (weights such as norms and embeddings, KV caches).
struct DeviceTensor {
  DeviceBuffer buffer;
  DType dtype = DType::kF32;
  Shape shape;

  bool empty() const { return buffer.data() == nullptr; }
  TensorView view() const { return buffer.view(dtype, shape); }
};

inline DeviceTensor make_device_tensor(Backend& backend, DType dtype, Shape shape) {
  DeviceTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.buffer = DeviceBuffer(backend, dtype_bytes(dtype, static_cast<size_t>(shape_numel(t.shape))));
  return t;
}

inline Result<DeviceTensor> try_make_device_tensor(Backend& backend, DType dtype, Shape shape) {
  DeviceTensor t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  NB_ASSIGN_OR_RETURN(t.buffer, DeviceBuffer::create(backend, dtype_bytes(dtype, static_cast<size_t>(shape_numel(t.shape)))));
  return t;
}

inline DeviceTensor upload_tensor(Backend& backend, const TensorView& host) {
  DeviceTensor t = make_device_tensor(backend, host.dtype, host.shape);
  if (t.buffer.bytes()) backend.upload(t.buffer.data(), host.data, t.buffer.bytes());
  return t;
}

}  // namespace nb::ops
