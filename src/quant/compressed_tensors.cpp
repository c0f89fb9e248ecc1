#include "quant/compressed_tensors.h"

#include <bit>
#include <cstring>

#include "core/log.h"
#include "core/thread_pool.h"
#include "quant/checks.h"

namespace nb::quant {

using detail::expect_dtype;
using detail::expect_float;
using detail::expect_shape;
using detail::require;
using detail::tensor_error;

namespace {

struct CtTensors {
  LinearLayout layout;
  const TensorInfo* packed = nullptr;
  const TensorInfo* scale = nullptr;
  const TensorInfo* zero_point = nullptr;  // null when symmetric
  std::vector<int32_t> g_idx;              // empty when contiguous
};

// weight_shape → the logical [out, in], cross-checked with the caller's expectation.
Status read_weight_shape(const Checkpoint& ck, const std::string& prefix, int64_t* out, int64_t* in) {
  NB_ASSIGN_OR_RETURN(const TensorInfo* t, require(ck, prefix + ".weight_shape", "the logical [out, in] of a "
                                                   "pack-quantized weight"));
  NB_RETURN_IF_ERROR(expect_dtype(ck, *t, {DType::kI64, DType::kI32}));
  NB_RETURN_IF_ERROR(expect_shape(ck, *t, {2}, "[out, in]"));
  std::vector<int64_t> v = read_i64(*t);
  if (v[0] <= 0 || v[1] <= 0 || v[0] > (int64_t{1} << 40) || v[1] > (int64_t{1} << 40))
    return tensor_error(ck, *t, strformat("expected a plausible positive [out, in], got [%lld, %lld]", static_cast<long long>(v[0]),
                                          static_cast<long long>(v[1])));
  if ((*out > 0 || *in > 0) && (v[0] != *out || v[1] != *in))
    return tensor_error(ck, *t, strformat("the model config expects [out, in] = [%lld, %lld], the checkpoint says "
                                          "[%lld, %lld]", static_cast<long long>(*out), static_cast<long long>(*in),
                                          static_cast<long long>(v[0]), static_cast<long long>(v[1])));
  *out = v[0];
  *in = v[1];
  return Status::ok();
}

Status check_scale(const Checkpoint& ck, const TensorInfo& t, const QuantScheme& s, int64_t out, int64_t groups) {
  NB_RETURN_IF_ERROR(expect_float(ck, t));
  if (s.strategy == QuantStrategy::kTensor) {
    if (t.numel() != 1 || t.shape.size() > 2)
      return expect_shape(ck, t, {1}, "one scale for the whole tensor");
    return Status::ok();
  }
  return expect_shape(ck, t, {out, groups}, strformat("out=%lld, %lld group(s)", static_cast<long long>(out),
                                                       static_cast<long long>(groups)));
}

Result<const TensorInfo*> check_zero_point(const Checkpoint& ck, const QuantConfig& cfg, const QuantScheme& s,
                                           const std::string& prefix, int64_t out, int64_t groups) {
  const std::string name = prefix + ".weight_zero_point";
  if (s.symmetric) {
    if (ck.find(name)) NB_LOG_DEBUG("%s: ignoring %s of a symmetric scheme", ck.location().c_str(), name.c_str());
    return static_cast<const TensorInfo*>(nullptr);
  }
  NB_ASSIGN_OR_RETURN(const TensorInfo* t, require(ck, name, "the scheme is asymmetric"));
  if (s.strategy == QuantStrategy::kTensor) {
    NB_RETURN_IF_ERROR(expect_dtype(ck, *t, {DType::kI8}));
    if (t->numel() != 1 || t->shape.size() > 2) return expect_shape(ck, *t, {1}, "one zero point for the tensor");
    return t;
  }
  NB_RETURN_IF_ERROR(expect_dtype(ck, *t, {DType::kI32, DType::kI8}));
  if (t->dtype == DType::kI8)  // written unpacked before 0.9.4
    NB_RETURN_IF_ERROR(expect_shape(ck, *t, {out, groups}, "legacy unpacked zero points [out, G]"));
  else
    NB_RETURN_IF_ERROR(expect_shape(ck, *t, {packed_words(out, s.bits, cfg.packing), groups},
                                    strformat("out=%lld, %lld group(s), %d zero points per int32 packed along out",
                                              static_cast<long long>(out), static_cast<long long>(groups),
                                              32 / s.bits)));
  return t;
}

// g_idx values must name a group; a g_idx equal to c / gs is dropped (contiguous groups).
Result<std::vector<int32_t>> check_g_idx(const Checkpoint& ck, const QuantScheme& s, const std::string& prefix,
                                         int64_t in, int64_t gs, int64_t groups) {
  const std::string name = prefix + ".weight_g_idx";
  const TensorInfo* t = ck.find(name);
  if (!t) {
    if (s.act_order) return require(ck, name, "actorder is 'group'").status();
    return std::vector<int32_t>{};
  }
  NB_RETURN_IF_ERROR(expect_dtype(ck, *t, {DType::kI32}));
  NB_RETURN_IF_ERROR(expect_shape(ck, *t, {in}, "one group index per input column"));
  std::vector<uint32_t> raw = read_u32(*t);
  std::vector<int32_t> g(raw.begin(), raw.end());
  bool trivial = true;
  for (int64_t c = 0; c < in; ++c) {
    if (g[c] < 0 || g[c] >= groups)
      return tensor_error(ck, *t, strformat("column %lld: group %d out of range [0, %lld)", static_cast<long long>(c),
                                            g[c], static_cast<long long>(groups)));
    trivial = trivial && g[c] == c / gs;
  }
  if (trivial) g.clear();
  return g;
}

Result<CtTensors> resolve(const Checkpoint& ck, const QuantConfig& cfg, const QuantScheme& s,
                          const std::string& prefix, int64_t out, int64_t in) {
  CtTensors r;
  NB_RETURN_IF_ERROR(read_weight_shape(ck, prefix, &out, &in));
  NB_ASSIGN_OR_RETURN(r.packed, require(ck, prefix + ".weight_packed", "quantized by " + s.describe()));
  NB_RETURN_IF_ERROR(expect_dtype(ck, *r.packed, {DType::kI32}));
  NB_RETURN_IF_ERROR(expect_shape(ck, *r.packed, {out, packed_words(in, s.bits, cfg.packing)},
                                  strformat("out=%lld, in=%lld, %d codes per int32", static_cast<long long>(out),
                                            static_cast<long long>(in), 32 / s.bits)));
  int64_t gs = in, groups = 1;
  if (s.strategy == QuantStrategy::kGroup) {
    gs = s.group_size;
    if (in % gs != 0)
      return unsupported(strformat("%s: %s: in=%lld is not a multiple of the group size %lld (compressed-tensors "
                                   "cannot dequantize it)", ck.location().c_str(), prefix.c_str(),
                                   static_cast<long long>(in), static_cast<long long>(gs)));
    groups = in / gs;
  }
  NB_ASSIGN_OR_RETURN(r.scale, require(ck, prefix + ".weight_scale", "every quantized weight has scales"));
  NB_RETURN_IF_ERROR(check_scale(ck, *r.scale, s, out, groups));
  NB_ASSIGN_OR_RETURN(r.zero_point, check_zero_point(ck, cfg, s, prefix, out, groups));
  NB_ASSIGN_OR_RETURN(r.g_idx, check_g_idx(ck, s, prefix, in, gs, groups));
  LinearLayout& l = r.layout;
  l.module = prefix;
  l.out = out;
  l.in = in;
  l.scheme = s;
  l.num_groups = groups;
  l.dtype = r.scale->dtype;
  l.has_g_idx = !r.g_idx.empty();
  l.source_format = "compressed-tensors pack-quantized" + (cfg.version.empty() ? "" : " " + cfg.version);
  l.tensors = {prefix + ".weight_packed", prefix + ".weight_scale", prefix + ".weight_shape"};
  if (r.zero_point) l.tensors.push_back(r.zero_point->name);
  if (ck.find(prefix + ".weight_g_idx")) l.tensors.push_back(prefix + ".weight_g_idx");
  return r;
}

// Zero points [out, G] (signed) from the packed, legacy or tensor-strategy form.
Status unpack_zero_points(const Checkpoint& ck, const QuantConfig& cfg, const TensorInfo& t, QuantizedWeight* w) {
  const int off = 1 << (w->bits - 1);
  if (t.dtype == DType::kI8) {
    std::vector<int8_t> z = read_i8(t);
    for (size_t i = 0; i < w->zeros.size(); ++i) {
      int8_t v = z.size() == 1 ? z[0] : z[i];
      if (v < w->qmin() || v > w->qmax())
        return tensor_error(ck, t, strformat("zero point %d out of the int%d range [%d, %d]", v, w->bits, w->qmin(),
                                             w->qmax()));
      w->zeros[i] = v;
    }
    return Status::ok();
  }
  // Packed along out: column g of the [words, G] tensor is one packed run of `out` codes.
  std::vector<uint32_t> words = read_u32(t);
  const int64_t nw = t.shape[0], G = w->num_groups;
  std::vector<uint32_t> column(static_cast<size_t>(nw));
  std::vector<uint8_t> u(static_cast<size_t>(w->out));
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t k = 0; k < nw; ++k) column[k] = words[static_cast<size_t>(k * G + g)];
    unpack_codes(column.data(), w->out, w->bits, cfg.packing, u.data());
    for (int64_t o = 0; o < w->out; ++o) w->zeros[static_cast<size_t>(o * G + g)] = static_cast<int8_t>(u[o] - off);
  }
  return Status::ok();
}

// For 4 and 8 bits a packed word's little-endian bytes already are canonical bytes once the offset
// is removed: u - 2^(b-1) in b-bit two's complement is u XOR 2^(b-1) (0x88888888 / 0x80808080 per
// word). Whole words are converted that way; a partial last word goes code by code.
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

void unpack_codes_rows(const TensorInfo& packed, BitPacking packing, QuantizedWeight* w) {
  const int64_t nw = packed.shape[1];
  const int off = 1 << (w->bits - 1);
  const int64_t per_word = 32 / w->bits, full = w->in / per_word;
  const uint32_t flip = w->bits == 4 ? 0x88888888u : 0x80808080u;
  ThreadPool::global().parallel_for(w->out, 16, [&](int64_t b, int64_t e) {
    std::vector<uint32_t> row(static_cast<size_t>(nw));
    std::vector<uint8_t> u(static_cast<size_t>(w->in));
    for (int64_t o = b; o < e; ++o) {
      std::memcpy(row.data(), packed.data + static_cast<size_t>(o * nw) * 4, static_cast<size_t>(nw) * 4);
      uint8_t* dst = w->codes.data() + o * w->row_bytes();
      for (int64_t j = 0; j < full; ++j) {
        const uint32_t x = row[j] ^ flip;
        std::memcpy(dst + 4 * j, &x, 4);  // little-endian host, like the file
      }
      if (full * per_word == w->in) continue;
      unpack_codes(row.data(), w->in, w->bits, packing, u.data());
      for (int64_t c = full * per_word; c < w->in; ++c) w->set_code(o, c, u[c] - off);
    }
  });
}

}  // namespace

Result<LinearLayout> describe_compressed_tensors(const Checkpoint& ckpt, const QuantConfig& config,
                                                 const QuantScheme& scheme, const std::string& prefix, int64_t out,
                                                 int64_t in) {
  NB_ASSIGN_OR_RETURN(CtTensors r, resolve(ckpt, config, scheme, prefix, out, in));
  return std::move(r.layout);
}

Result<QuantizedWeight> load_compressed_tensors(const Checkpoint& ckpt, const QuantConfig& config,
                                                const QuantScheme& scheme, const std::string& prefix, int64_t out,
                                                int64_t in) {
  NB_ASSIGN_OR_RETURN(CtTensors r, resolve(ckpt, config, scheme, prefix, out, in));
  const LinearLayout& l = r.layout;
  QuantizedWeight w = make_quantized_weight(l.out, l.in, scheme.bits, scheme.strategy, scheme.group_size,
                                            scheme.symmetric, r.scale->dtype);
  w.source_format = l.source_format;
  unpack_codes_rows(*r.packed, config.packing, &w);
  if (scheme.strategy == QuantStrategy::kTensor) {  // expand the single scale to [out, 1]
    const size_t es = dtype_bytes(w.scale_dtype(), 1);
    for (int64_t o = 0; o < w.out; ++o) std::memcpy(static_cast<uint8_t*>(w.scales.data()) + o * es, r.scale->data, es);
  } else {
    std::memcpy(w.scales.data(), r.scale->data, w.scales.nbytes());
  }
  if (r.zero_point) NB_RETURN_IF_ERROR(unpack_zero_points(ckpt, config, *r.zero_point, &w));
  w.g_idx = std::move(r.g_idx);
  return w;
}

std::vector<NamedTensor> compressed_tensors_tensors(const std::string& prefix, const QuantizedWeight& w) {
  std::vector<NamedTensor> out;
  const int off = 1 << (w.bits - 1);
  auto add = [&](const std::string& suffix, DType dtype, Shape shape, const void* data, size_t bytes) {
    NamedTensor t{prefix + "." + suffix, dtype, std::move(shape), std::vector<uint8_t>(bytes)};
    if (bytes) std::memcpy(t.data.data(), data, bytes);
    out.push_back(std::move(t));
  };
  // weight_packed: each row is one packed run (pad codes are 0, i.e. q = -2^(b-1)).
  const int64_t nw = packed_words(w.in, w.bits, BitPacking::kDense);
  std::vector<uint32_t> packed(static_cast<size_t>(w.out * nw));
  ThreadPool::global().parallel_for(w.out, 16, [&](int64_t b, int64_t e) {
    std::vector<uint8_t> u(static_cast<size_t>(w.in));
    for (int64_t o = b; o < e; ++o) {
      for (int64_t c = 0; c < w.in; ++c) u[c] = static_cast<uint8_t>(w.code(o, c) + off);
      pack_codes(u.data(), w.in, w.bits, BitPacking::kDense, packed.data() + o * nw);
    }
  });
  add("weight_packed", DType::kI32, {w.out, nw}, packed.data(), packed.size() * 4);
  const size_t es = dtype_bytes(w.scale_dtype(), 1);
  if (w.strategy == QuantStrategy::kTensor) add("weight_scale", w.scale_dtype(), {1}, w.scales.data(), es);
  else add("weight_scale", w.scale_dtype(), {w.out, w.num_groups}, w.scales.data(), w.scales.nbytes());
  const int64_t shape[2] = {w.out, w.in};
  add("weight_shape", DType::kI64, {2}, shape, sizeof(shape));
  if (!w.symmetric && w.strategy == QuantStrategy::kTensor) {
    add("weight_zero_point", DType::kI8, {1}, w.zeros.data(), 1);
  } else if (!w.symmetric) {
    // Packed along out: for each group, the column of `out` zero points is one packed run.
    const int64_t zw = packed_words(w.out, w.bits, BitPacking::kDense), G = w.num_groups;
    std::vector<uint32_t> zp(static_cast<size_t>(zw * G)), column(static_cast<size_t>(zw));
    std::vector<uint8_t> u(static_cast<size_t>(w.out));
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t o = 0; o < w.out; ++o) u[o] = static_cast<uint8_t>(w.zero(o, g) + off);
      pack_codes(u.data(), w.out, w.bits, BitPacking::kDense, column.data());
      for (int64_t k = 0; k < zw; ++k) zp[static_cast<size_t>(k * G + g)] = column[k];
    }
    add("weight_zero_point", DType::kI32, {zw, G}, zp.data(), zp.size() * 4);
  }
  if (!w.g_idx.empty()) add("weight_g_idx", DType::kI32, {w.in}, w.g_idx.data(), w.g_idx.size() * 4);
  return out;
}

}  // namespace nb::quant
