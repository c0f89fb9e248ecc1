#include "quant/quantized_weight.h"

#include <cstring>

#include "core/thread_pool.h"

namespace nb::quant {

const char* strategy_name(QuantStrategy s) {
  switch (s) {
    case QuantStrategy::kTensor: return "tensor";
    case QuantStrategy::kChannel: return "channel";
    case QuantStrategy::kGroup: return "group";
  }
  return "?";
}

float QuantizedWeight::scale(int64_t o, int64_t g) const {
  return load_as_float(scales.data(), scales.dtype(), static_cast<size_t>(o * num_groups + g));
}

Status QuantizedWeight::validate() const {
  auto bad = [&](const std::string& what) {
    return internal_error(strformat("quantized weight [%lld, %lld] (%s): %s", static_cast<long long>(out),
                                    static_cast<long long>(in), source_format.c_str(), what.c_str()));
  };
  if (bits != 4 && bits != 8) return bad(strformat("bits %d, expected 4 or 8", bits));
  if (out <= 0 || in <= 0 || group_size <= 0 || num_groups <= 0) return bad("non-positive size");
  if (g_idx.empty() && num_groups != (in + group_size - 1) / group_size) return bad("num_groups != ceil(in/group_size)");
  if (codes.size() != static_cast<size_t>(out * row_bytes())) return bad("codes size");
  if (scales.shape() != Shape{out, num_groups}) return bad("scales shape " + shape_to_string(scales.shape()));
  if (!is_float_dtype(scales.dtype()) || scales.dtype() == DType::kF64) return bad("scale dtype");
  if (symmetric != zeros.empty()) return bad("zeros present iff asymmetric");
  if (!zeros.empty() && zeros.size() != static_cast<size_t>(out * num_groups)) return bad("zeros size");
  if (!g_idx.empty()) {
    if (g_idx.size() != static_cast<size_t>(in)) return bad("g_idx size");
    for (int32_t g : g_idx)
      if (g < 0 || g >= num_groups) return bad("g_idx value out of range");
  }
  return Status::ok();
}

QuantizedWeight QuantizedWeight::clone() const {
  QuantizedWeight c;
  c.out = out;
  c.in = in;
  c.bits = bits;
  c.strategy = strategy;
  c.group_size = group_size;
  c.num_groups = num_groups;
  c.symmetric = symmetric;
  c.codes = codes;
  c.scales = HostTensor(scales.dtype(), scales.shape());
  if (scales.nbytes()) std::memcpy(c.scales.data(), scales.data(), scales.nbytes());
  c.zeros = zeros;
  c.g_idx = g_idx;
  c.source_format = source_format;
  return c;
}

std::string QuantizedWeight::describe() const {
  std::string s = strformat("int%d %s", bits, strategy_name(strategy));
  if (strategy == QuantStrategy::kGroup) s += strformat(" %lld", static_cast<long long>(group_size));
  s += symmetric ? " sym" : " asym";
  if (!g_idx.empty()) s += " act-order";
  return s;
}

QuantizedWeight make_quantized_weight(int64_t out, int64_t in, int bits, QuantStrategy strategy, int64_t group_size,
                                      bool symmetric, DType scale_dtype) {
  NB_CHECK(out > 0 && in > 0 && (bits == 4 || bits == 8), "bad quantized weight [%lld, %lld] int%d",
           static_cast<long long>(out), static_cast<long long>(in), bits);
  QuantizedWeight w;
  w.out = out;
  w.in = in;
  w.bits = bits;
  w.strategy = strategy;
  w.group_size = (strategy == QuantStrategy::kGroup && group_size > 0) ? group_size : in;
  w.num_groups = (in + w.group_size - 1) / w.group_size;
  w.symmetric = symmetric;
  w.codes.assign(static_cast<size_t>(out * w.row_bytes()), 0);
  w.scales = HostTensor(scale_dtype, {out, w.num_groups});
  if (!symmetric) w.zeros.assign(static_cast<size_t>(out * w.num_groups), 0);
  return w;
}

std::vector<float> dequantize_float(const QuantizedWeight& w) {
  std::vector<float> r(static_cast<size_t>(w.out * w.in));
  ThreadPool::global().parallel_for(w.out, 16, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      for (int64_t c = 0; c < w.in; ++c) {
        const int64_t g = w.group_of(c);
        r[static_cast<size_t>(o * w.in + c)] = static_cast<float>(w.code(o, c) - w.zero(o, g)) * w.scale(o, g);
      }
    }
  });
  return r;
}

HostTensor dequantize(const QuantizedWeight& w, DType out_dtype) {
  NB_CHECK(out_dtype == DType::kBF16 || out_dtype == DType::kF16 || out_dtype == DType::kF32,
           "dequantize to %s", dtype_name(out_dtype));
  std::vector<float> f = dequantize_float(w);
  HostTensor t(out_dtype, {w.out, w.in});
  for (size_t i = 0; i < f.size(); ++i) {
    if (out_dtype == DType::kF32) t.as<float>()[i] = f[i];
    else if (out_dtype == DType::kBF16) t.as<uint16_t>()[i] = float_to_bf16(f[i]);
    else t.as<uint16_t>()[i] = float_to_fp16(f[i]);
  }
  return t;
}

Result<QuantizedWeight> slice_out(const QuantizedWeight& w, int64_t begin, int64_t count) {
  if (begin < 0 || count <= 0 || begin + count > w.out)
    return out_of_range(strformat("slice of rows [%lld, %lld) of a weight with out=%lld", static_cast<long long>(begin),
                                  static_cast<long long>(begin + count), static_cast<long long>(w.out)));
  QuantizedWeight s = make_quantized_weight(count, w.in, w.bits, w.strategy, w.group_size, w.symmetric, w.scale_dtype());
  s.num_groups = w.num_groups;  // unchanged (g_idx may keep more columns than ceil(in/gs))
  s.scales = HostTensor(w.scale_dtype(), {count, w.num_groups});
  if (!w.symmetric) s.zeros.assign(static_cast<size_t>(count * w.num_groups), 0);
  s.g_idx = w.g_idx;
  s.source_format = w.source_format;
  const size_t rb = static_cast<size_t>(w.row_bytes());
  std::memcpy(s.codes.data(), w.codes.data() + static_cast<size_t>(begin) * rb, static_cast<size_t>(count) * rb);
  const size_t sb = dtype_bytes(w.scale_dtype(), static_cast<size_t>(w.num_groups));
  std::memcpy(s.scales.data(), static_cast<const uint8_t*>(w.scales.data()) + static_cast<size_t>(begin) * sb,
              static_cast<size_t>(count) * sb);
  if (!w.symmetric)
    std::memcpy(s.zeros.data(), w.zeros.data() + begin * w.num_groups, static_cast<size_t>(count * w.num_groups));
  return s;
}

namespace {

// Copies scale/zero columns [g0, g0 + ng) of every row.
void copy_group_columns(const QuantizedWeight& w, int64_t g0, int64_t ng, QuantizedWeight* s) {
  const size_t es = dtype_bytes(w.scale_dtype(), 1);
  for (int64_t o = 0; o < w.out; ++o) {
    std::memcpy(static_cast<uint8_t*>(s->scales.data()) + static_cast<size_t>(o * ng) * es,
                static_cast<const uint8_t*>(w.scales.data()) + static_cast<size_t>(o * w.num_groups + g0) * es,
                static_cast<size_t>(ng) * es);
    if (!w.symmetric)
      std::memcpy(s->zeros.data() + o * ng, w.zeros.data() + o * w.num_groups + g0, static_cast<size_t>(ng));
  }
}

}  // namespace

Result<QuantizedWeight> slice_in(const QuantizedWeight& w, int64_t begin, int64_t count) {
  if (begin < 0 || count <= 0 || begin + count > w.in)
    return out_of_range(strformat("slice of columns [%lld, %lld) of a weight with in=%lld",
                                  static_cast<long long>(begin), static_cast<long long>(begin + count),
                                  static_cast<long long>(w.in)));
  const bool grouped = w.strategy == QuantStrategy::kGroup && w.g_idx.empty();
  if (grouped && (begin % w.group_size != 0 || (count % w.group_size != 0 && begin + count != w.in)))
    return invalid_argument(strformat("slice of columns [%lld, %lld) does not fall on group boundaries (group size %lld)",
                                      static_cast<long long>(begin), static_cast<long long>(begin + count),
                                      static_cast<long long>(w.group_size)));
  QuantizedWeight s;
  if (!w.g_idx.empty()) {
    // Act-order: columns of one group are scattered, so every group's scale stays (like vLLM).
    s = make_quantized_weight(w.out, count, w.bits, QuantStrategy::kGroup, w.group_size, w.symmetric, w.scale_dtype());
    s.num_groups = w.num_groups;
    s.scales = HostTensor(w.scale_dtype(), {w.out, w.num_groups});
    if (!w.symmetric) s.zeros.assign(static_cast<size_t>(w.out * w.num_groups), 0);
    s.g_idx.assign(w.g_idx.begin() + begin, w.g_idx.begin() + begin + count);
    copy_group_columns(w, 0, w.num_groups, &s);
  } else if (grouped) {
    s = make_quantized_weight(w.out, count, w.bits, w.strategy, w.group_size, w.symmetric, w.scale_dtype());
    copy_group_columns(w, begin / w.group_size, s.num_groups, &s);
  } else {
    // Channel / tensor: one scale per row whatever the columns; the group spans the slice.
    s = make_quantized_weight(w.out, count, w.bits, w.strategy, count, w.symmetric, w.scale_dtype());
    copy_group_columns(w, 0, 1, &s);
  }
  s.strategy = w.strategy;
  s.source_format = w.source_format;
  for (int64_t o = 0; o < w.out; ++o)
    for (int64_t c = 0; c < count; ++c) s.set_code(o, c, w.code(o, begin + c));
  return s;
}

}  // namespace nb::quant
