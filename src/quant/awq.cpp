#include "quant/awq.h"

#include <cstring>

#include "core/thread_pool.h"
#include "quant/checks.h"

namespace nb::quant {

using detail::expect_dtype;
using detail::expect_float;
using detail::expect_shape;
using detail::require;
using detail::tensor_error;

namespace {

struct AwqTensors {
  LinearLayout layout;
  const TensorInfo* qweight = nullptr;
  const TensorInfo* qzeros = nullptr;
  const TensorInfo* scales = nullptr;
};

Result<AwqTensors> resolve(const Checkpoint& ck, const QuantConfig& cfg, const std::string& prefix, int64_t out,
                           int64_t in) {
  const QuantScheme& s = cfg.scheme;
  AwqTensors r;
  NB_ASSIGN_OR_RETURN(r.qweight, require(ck, prefix + ".qweight", "quantized by " + s.describe()));
  NB_RETURN_IF_ERROR(expect_dtype(ck, *r.qweight, {DType::kI32}));
  if (out <= 0 || in <= 0) {  // inspection: in is unpacked in qweight, out in scales
    const TensorInfo* sc = ck.find(prefix + ".scales");
    if (r.qweight->shape.size() != 2) return tensor_error(ck, *r.qweight, "expected a 2-D tensor [in, out / 8]");
    in = r.qweight->shape[0];
    out = (sc && sc->shape.size() == 2) ? sc->shape[1] : r.qweight->shape[1] * 8;
  }
  if (out % 8 != 0)
    return unsupported(strformat("%s: %s: out=%lld is not a multiple of 8 (AWQ packs 8 output columns per int32)",
                                 ck.location().c_str(), prefix.c_str(), static_cast<long long>(out)));
  if (in % s.group_size != 0)
    return unsupported(strformat("%s: %s: in=%lld is not a multiple of the group size %lld", ck.location().c_str(),
                                 prefix.c_str(), static_cast<long long>(in), static_cast<long long>(s.group_size)));
  const int64_t groups = in / s.group_size;
  NB_RETURN_IF_ERROR(expect_shape(ck, *r.qweight, {in, out / 8},
                                  strformat("in=%lld, out=%lld, 8 codes per int32 along out",
                                            static_cast<long long>(in), static_cast<long long>(out))));
  NB_ASSIGN_OR_RETURN(r.qzeros, require(ck, prefix + ".qzeros", "AWQ zero points"));
  NB_RETURN_IF_ERROR(expect_dtype(ck, *r.qzeros, {DType::kI32}));
  NB_RETURN_IF_ERROR(expect_shape(ck, *r.qzeros, {groups, out / 8},
                                  strformat("%lld group(s), out=%lld, 8 zero points per int32",
                                            static_cast<long long>(groups), static_cast<long long>(out))));
  NB_ASSIGN_OR_RETURN(r.scales, require(ck, prefix + ".scales", "every quantized weight has scales"));
  NB_RETURN_IF_ERROR(expect_float(ck, *r.scales));
  NB_RETURN_IF_ERROR(expect_shape(ck, *r.scales, {groups, out}, strformat("%lld group(s), out=%lld",
                                                                           static_cast<long long>(groups),
                                                                           static_cast<long long>(out))));
  LinearLayout& l = r.layout;
  l.module = prefix;
  l.out = out;
  l.in = in;
  l.scheme = s;
  l.num_groups = groups;
  l.dtype = r.scales->dtype;
  l.source_format = "awq gemm";
  l.tensors = {prefix + ".qweight", prefix + ".qzeros", prefix + ".scales"};
  return r;
}

// Unpacks an AWQ-interleaved [rows, out/8] int32 tensor into fn(row, column, unsigned code).
template <typename Fn>
void for_each_awq_code(const std::vector<uint32_t>& words, int64_t rows, int64_t out, Fn fn) {
  for (int64_t k = 0; k < rows; ++k)
    for (int64_t c = 0; c < out / 8; ++c) {
      const uint32_t word = words[static_cast<size_t>(k * (out / 8) + c)];
      for (int j = 0; j < 8; ++j) fn(k, 8 * c + j, static_cast<int>((word >> (4 * kAwqReverse[j])) & 0xF));
    }
}

}  // namespace

Result<LinearLayout> describe_awq(const Checkpoint& ckpt, const QuantConfig& config, const std::string& prefix,
                                  int64_t out, int64_t in) {
  NB_ASSIGN_OR_RETURN(AwqTensors r, resolve(ckpt, config, prefix, out, in));
  return std::move(r.layout);
}

Result<QuantizedWeight> load_awq(const Checkpoint& ckpt, const QuantConfig& config, const std::string& prefix,
                                 int64_t out, int64_t in) {
  NB_ASSIGN_OR_RETURN(AwqTensors r, resolve(ckpt, config, prefix, out, in));
  const LinearLayout& l = r.layout;
  QuantizedWeight w = make_quantized_weight(l.out, l.in, 4, QuantStrategy::kGroup, config.scheme.group_size,
                                            /*symmetric=*/false, l.dtype);
  w.source_format = l.source_format;
  // qweight [in, out/8] holds row k of the transposed weight: canonical code (n, k).
  for_each_awq_code(read_u32(*r.qweight), l.in, l.out, [&](int64_t k, int64_t n, int u) { w.set_code(n, k, u - 8); });
  for_each_awq_code(read_u32(*r.qzeros), l.num_groups, l.out, [&](int64_t g, int64_t n, int u) {
    w.zeros[static_cast<size_t>(n * l.num_groups + g)] = static_cast<int8_t>(u - 8);
  });
  const size_t es = dtype_bytes(l.dtype, 1);
  for (int64_t g = 0; g < l.num_groups; ++g)
    for (int64_t n = 0; n < l.out; ++n)
      std::memcpy(static_cast<uint8_t*>(w.scales.data()) + static_cast<size_t>(n * l.num_groups + g) * es,
                  r.scales->data + static_cast<size_t>(g * l.out + n) * es, es);
  return w;
}

}  // namespace nb::quant
