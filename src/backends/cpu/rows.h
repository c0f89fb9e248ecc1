// A tensor seen as a matrix of rows: every op of the CPU backend works on [rows, cols] with a row
// stride, which covers 2-D views with strides {ld, 1} and any contiguous tensor (rows = product of the
// leading dims, cols = last dim).
#pragma once

#include <cstdint>

#include "core/status.h"
#include "core/tensor.h"

namespace nb::cpu {

struct Rows {
  uint8_t* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0, cols = 0, ld = 0;  // ld in elements

  template <typename T>
  T* row(int64_t r) const { return reinterpret_cast<T*>(data + dtype_bytes(dtype, static_cast<size_t>(r * ld))); }
  void* row_ptr(int64_t r) const { return data + dtype_bytes(dtype, static_cast<size_t>(r * ld)); }
  // Element (r, c) of a float-like tensor (F32/BF16/F16) as float, and the rounding store.
  float get(int64_t r, int64_t c) const { return load_as_float(data, dtype, static_cast<size_t>(r * ld + c)); }
  void set(int64_t r, int64_t c, float v) const;
};

// rank 1 -> one row; rank 2 -> rows with strides {ld, 1} (or contiguous); rank >= 3 must be contiguous.
inline Rows as_rows(const TensorView& t) {
  Rows r;
  r.data = static_cast<uint8_t*>(t.data);
  r.dtype = t.dtype;
  NB_CHECK(t.rank() >= 1, "a rank-0 tensor has no rows");
  r.cols = t.dim(-1);
  r.rows = t.rank() == 1 ? 1 : t.numel() / (r.cols ? r.cols : 1);
  if (r.cols == 0) r.rows = t.rank() == 1 ? 1 : t.dim(0);
  r.ld = r.cols;
  if (!t.strides.empty() && !t.is_contiguous()) {
    NB_CHECK(t.rank() == 2 && t.strides[1] == 1, "CPU ops take contiguous tensors or 2-D row-strided views, got %s",
             shape_to_string(t.shape).c_str());
    r.ld = t.strides[0];
  }
  return r;
}

inline void Rows::set(int64_t r, int64_t c, float v) const {
  const size_t i = static_cast<size_t>(r * ld + c);
  switch (dtype) {
    case DType::kF32: reinterpret_cast<float*>(data)[i] = v; break;
    case DType::kBF16: reinterpret_cast<uint16_t*>(data)[i] = float_to_bf16(v); break;
    case DType::kF16: reinterpret_cast<uint16_t*>(data)[i] = float_to_fp16(v); break;
    default: NB_CHECK(false, "CPU ops store F32/BF16/F16 only, got %s", dtype_name(dtype));
  }
}

inline bool is_float16_or_32(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

}  // namespace nb::cpu
