// Tensor-core helpers shared by the CUDA kernels (linear.cu, w4_tiled.cu, attention.cu):
// mma.sync m16n8k16 with F32 accumulation for T = bf16 / f16 operands, packing of two floats into
// one operand register, and the magic-number constants of the INT4 dequantizers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace nb::cuda {

template <typename T> struct Mma;

template <> struct Mma<__nv_bfloat16> {
  static constexpr uint32_t kMagic = 0x43004300u;    // bf16x2 (128, 128): magic | u = 128 + u, exact for u < 128
  static constexpr uint32_t kSymBase = 0x43084308u;  // (136, 136) = 128 + 8, the symmetric INT4 offset
  static constexpr float kBase = 128.f;
  // (lo, hi) rounded to T; lo in the low half, as the fragments want it.
  static __device__ __forceinline__ uint32_t pair(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  // (v - base) * s on two lanes of T (one rounding: v - base is exact for the dequantizers' integers).
  static __device__ __forceinline__ uint32_t sub_mul(uint32_t v, uint32_t base, uint32_t s) {
    __nv_bfloat162 r = __hmul2(__hsub2(*reinterpret_cast<__nv_bfloat162*>(&v), *reinterpret_cast<__nv_bfloat162*>(&base)),
                               *reinterpret_cast<__nv_bfloat162*>(&s));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  // c += a (16x16, row-major fragments a[0..3]) * b (16x8, column fragments b0, b1).
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

template <> struct Mma<__half> {
  static constexpr uint32_t kMagic = 0x64006400u;    // f16x2 (1024, 1024)
  static constexpr uint32_t kSymBase = 0x64086408u;  // (1032, 1032)
  static constexpr float kBase = 1024.f;
  static __device__ __forceinline__ uint32_t pair(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ uint32_t sub_mul(uint32_t v, uint32_t base, uint32_t s) {
    __half2 r = __hmul2(__hsub2(*reinterpret_cast<__half2*>(&v), *reinterpret_cast<__half2*>(&base)),
                        *reinterpret_cast<__half2*>(&s));
    return *reinterpret_cast<uint32_t*>(&r);
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

}  // namespace nb::cuda
