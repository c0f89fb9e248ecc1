#include "quant/gptq.h"

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

struct GptqTensors {
  LinearLayout layout;
  const TensorInfo* qweight = nullptr;
  const TensorInfo* qzeros = nullptr;  // null when symmetric (ignored) or absent
  const TensorInfo* scales = nullptr;
  std::vector<int32_t> g_idx;  // empty = contiguous groups
};

// Logical shape: the caller's, or (for inspection) the unpacked dimensions of qweight / g_idx.
Status gptq_shape(const Checkpoint& ck, const std::string& prefix, const TensorInfo& qweight, int pf, int64_t* out,
                  int64_t* in) {
  if (*out > 0 && *in > 0) return Status::ok();
  if (qweight.shape.size() != 2) return tensor_error(ck, qweight, "expected a 2-D tensor [in / pf, out]");
  *out = qweight.shape[1];
  const TensorInfo* g = ck.find(prefix + ".g_idx");
  *in = (g && g->shape.size() == 1) ? g->shape[0] : qweight.shape[0] * pf;
  return Status::ok();
}

Result<std::vector<int32_t>> gptq_g_idx(const Checkpoint& ck, const QuantScheme& s, const std::string& prefix,
                                        int64_t in, int64_t groups) {
  const TensorInfo* t = ck.find(prefix + ".g_idx");
  if (!t) {
    if (s.act_order) return require(ck, prefix + ".g_idx", "desc_act is true").status();
    return std::vector<int32_t>{};
  }
  NB_RETURN_IF_ERROR(expect_dtype(ck, *t, {DType::kI32}));
  NB_RETURN_IF_ERROR(expect_shape(ck, *t, {in}, "one group index per input row"));
  if (!s.act_order) return std::vector<int32_t>{};  // without desc_act groups are contiguous (vLLM ignores g_idx)
  std::vector<uint32_t> raw = read_u32(*t);
  std::vector<int32_t> g(raw.begin(), raw.end());
  bool trivial = true;
  for (int64_t c = 0; c < in; ++c) {
    if (g[c] < 0 || g[c] >= groups)
      return tensor_error(ck, *t, strformat("row %lld: group %d out of range [0, %lld)", static_cast<long long>(c), g[c],
                                            static_cast<long long>(groups)));
    trivial = trivial && g[c] == c / s.group_size;
  }
  if (trivial) g.clear();
  return g;
}

Result<GptqTensors> resolve(const Checkpoint& ck, const QuantConfig& cfg, const std::string& prefix, int64_t out,
                            int64_t in) {
  const QuantScheme& s = cfg.scheme;
  const int pf = 32 / s.bits;
  GptqTensors r;
  NB_ASSIGN_OR_RETURN(r.qweight, require(ck, prefix + ".qweight", "quantized by " + s.describe()));
  NB_RETURN_IF_ERROR(expect_dtype(ck, *r.qweight, {DType::kI32}));
  NB_RETURN_IF_ERROR(gptq_shape(ck, prefix, *r.qweight, pf, &out, &in));
  if (in % pf != 0)
    return unsupported(strformat("%s: %s: in=%lld is not a multiple of %d (GPTQ packs %d input rows per int32)",
                                 ck.location().c_str(), prefix.c_str(), static_cast<long long>(in), pf, pf));
  NB_RETURN_IF_ERROR(expect_shape(ck, *r.qweight, {in / pf, out},
                                  strformat("in=%lld, out=%lld, %d codes per int32 along in",
                                            static_cast<long long>(in), static_cast<long long>(out), pf)));
  const int64_t gs = s.strategy == QuantStrategy::kGroup ? s.group_size : in;
  const int64_t groups = (in + gs - 1) / gs;
  NB_ASSIGN_OR_RETURN(r.scales, require(ck, prefix + ".scales", "every quantized weight has scales"));
  NB_RETURN_IF_ERROR(expect_float(ck, *r.scales));
  NB_RETURN_IF_ERROR(expect_shape(ck, *r.scales, {groups, out}, strformat("%lld group(s), out=%lld",
                                                                           static_cast<long long>(groups),
                                                                           static_cast<long long>(out))));
  const TensorInfo* qz = ck.find(prefix + ".qzeros");
  if (!qz && !s.symmetric) return require(ck, prefix + ".qzeros", "the scheme is asymmetric").status();
  if (qz) {
    NB_RETURN_IF_ERROR(expect_dtype(ck, *qz, {DType::kI32}));
    if (out % pf != 0)
      return unsupported(strformat("%s: %s: out=%lld is not a multiple of %d (GPTQ packs %d zero points per int32)",
                                   ck.location().c_str(), prefix.c_str(), static_cast<long long>(out), pf, pf));
    NB_RETURN_IF_ERROR(expect_shape(ck, *qz, {groups, out / pf},
                                    strformat("%lld group(s), out=%lld, %d zero points per int32",
                                              static_cast<long long>(groups), static_cast<long long>(out), pf)));
    if (!s.symmetric) r.qzeros = qz;
  }
  NB_ASSIGN_OR_RETURN(r.g_idx, gptq_g_idx(ck, s, prefix, in, groups));
  LinearLayout& l = r.layout;
  l.module = prefix;
  l.out = out;
  l.in = in;
  l.scheme = s;
  l.num_groups = groups;
  l.dtype = r.scales->dtype;
  l.has_g_idx = !r.g_idx.empty();
  l.source_format = cfg.gptq_v2 ? "gptq_v2" : "gptq";
  l.tensors = {prefix + ".qweight", prefix + ".scales"};
  if (qz) l.tensors.push_back(prefix + ".qzeros");
  if (ck.find(prefix + ".g_idx")) l.tensors.push_back(prefix + ".g_idx");
  return r;
}

}  // namespace

Result<LinearLayout> describe_gptq(const Checkpoint& ckpt, const QuantConfig& config, const std::string& prefix,
                                   int64_t out, int64_t in) {
  NB_ASSIGN_OR_RETURN(GptqTensors r, resolve(ckpt, config, prefix, out, in));
  return std::move(r.layout);
}

Result<QuantizedWeight> load_gptq(const Checkpoint& ckpt, const QuantConfig& config, const std::string& prefix,
                                  int64_t out, int64_t in) {
  NB_ASSIGN_OR_RETURN(GptqTensors r, resolve(ckpt, config, prefix, out, in));
  const LinearLayout& l = r.layout;
  const QuantScheme& s = config.scheme;
  const int b = s.bits, pf = 32 / b, off = 1 << (b - 1);
  const uint32_t mask = (1u << b) - 1u;
  QuantizedWeight w = make_quantized_weight(l.out, l.in, b, s.strategy, s.group_size, s.symmetric, l.dtype);
  w.source_format = l.source_format;
  // qweight [in/pf, out]: bits [b*i, b*i+b-1] of word [k][n] = u[pf*k + i][n].
  const std::vector<uint32_t> qw = read_u32(*r.qweight);
  ThreadPool::global().parallel_for(l.out, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t k = 0; k < l.in / pf; ++k) {
        const uint32_t word = qw[static_cast<size_t>(k * l.out + n)];
        for (int i = 0; i < pf; ++i) w.set_code(n, k * pf + i, static_cast<int>((word >> (b * i)) & mask) - off);
      }
  });
  // scales [G, out] → [out, G].
  const size_t es = dtype_bytes(l.dtype, 1);
  for (int64_t g = 0; g < l.num_groups; ++g)
    for (int64_t n = 0; n < l.out; ++n)
      std::memcpy(static_cast<uint8_t*>(w.scales.data()) + static_cast<size_t>(n * l.num_groups + g) * es,
                  r.scales->data + static_cast<size_t>(g * l.out + n) * es, es);
  if (r.qzeros) {
    // qzeros [G, out/pf]: v1 stores z - 1 per field (decode (field + 1) & mask), v2 stores z.
    const std::vector<uint32_t> qz = read_u32(*r.qzeros);
    for (int64_t g = 0; g < l.num_groups; ++g)
      for (int64_t n = 0; n < l.out; ++n) {
        const uint32_t word = qz[static_cast<size_t>(g * (l.out / pf) + n / pf)];
        uint32_t z = (word >> (b * (n % pf))) & mask;
        if (!config.gptq_v2) z = (z + 1) & mask;
        w.zeros[static_cast<size_t>(n * l.num_groups + g)] = static_cast<int8_t>(static_cast<int>(z) - off);
      }
  }
  w.g_idx = std::move(r.g_idx);
  return w;
}

}  // namespace nb::quant
