// Reference weights, linear and LoRA: per-element dequantization, double accumulation.
#include <cstring>

#include "backends/cpu/ref/ref_ops.h"
#include "backends/cpu/rows.h"
#include "ops/quant_weight.h"

namespace nb::cpu::ref {

Result<std::unique_ptr<ops::PackedWeight>> pack_quantized(const ops::QuantWeightView& w) {
  NB_RETURN_IF_ERROR(ops::validate_quant_weight(w));
  auto p = std::make_unique<RefQuantWeight>();
  const size_t groups = static_cast<size_t>(w.out * w.num_groups);
  p->codes.assign(w.codes, w.codes + ops::quant_codes_bytes(w));
  const uint8_t* scales = static_cast<const uint8_t*>(w.scales);
  p->scales.assign(scales, scales + dtype_bytes(w.scale_dtype, groups));
  if (w.zeros) p->zeros.assign(w.zeros, w.zeros + groups);
  if (w.g_idx) p->g_idx.assign(w.g_idx, w.g_idx + w.in);
  p->view = w;
  p->view.codes = p->codes.data();
  p->view.scales = p->scales.data();
  p->view.zeros = w.zeros ? p->zeros.data() : nullptr;
  p->view.g_idx = w.g_idx ? p->g_idx.data() : nullptr;
  p->out = w.out;
  p->in = w.in;
  p->quantized = true;
  p->bits = w.bits;
  p->group_size = w.group_size;
  p->device_bytes = p->codes.size() + p->scales.size() + p->zeros.size() + p->g_idx.size() * 4;
  return std::unique_ptr<ops::PackedWeight>(std::move(p));
}

Result<std::unique_ptr<ops::PackedWeight>> pack_dense(const TensorView& w) {
  if (w.rank() != 2 || !w.is_contiguous() || !is_float16_or_32(w.dtype))
    return invalid_argument(strformat("dense weight: expected a contiguous 2-D BF16/F16/F32 tensor, got %s %s",
                                      dtype_name(w.dtype), shape_to_string(w.shape).c_str()));
  if (w.dim(0) <= 0 || w.dim(1) <= 0)
    return invalid_argument(strformat("dense weight: shape must be positive, got %s", shape_to_string(w.shape).c_str()));
  auto p = std::make_unique<RefDenseWeight>();
  p->dtype = w.dtype;
  const uint8_t* src = static_cast<const uint8_t*>(w.data);
  p->data.assign(src, src + w.nbytes());
  p->out = w.dim(0);
  p->in = w.dim(1);
  p->quantized = false;
  p->bits = dtype_bits(w.dtype);
  p->device_bytes = p->data.size();
  return std::unique_ptr<ops::PackedWeight>(std::move(p));
}

float weight_at(const ops::PackedWeight& w, int64_t n, int64_t k) {
  if (auto* q = dynamic_cast<const RefQuantWeight*>(&w)) return ops::dequant_weight(q->view, n, k);
  auto* d = dynamic_cast<const RefDenseWeight*>(&w);
  NB_CHECK(d != nullptr, "the reference linear needs a weight packed by the reference backend");
  return load_as_float(d->data.data(), d->dtype, static_cast<size_t>(n * d->in + k));
}

void linear(TensorView out, TensorView x, const ops::PackedWeight& w, const TensorView* bias) {
  const Rows o = as_rows(out), xr = as_rows(x);
  NB_CHECK(xr.cols == w.in && o.cols == w.out && o.rows == xr.rows, "linear: out %s, x %s, weight [%lld, %lld]",
           shape_to_string(out.shape).c_str(), shape_to_string(x.shape).c_str(), static_cast<long long>(w.out),
           static_cast<long long>(w.in));
  NB_CHECK(!bias || bias->numel() == w.out, "linear: bias has %lld elements, expected %lld",
           static_cast<long long>(bias->numel()), static_cast<long long>(w.out));
  // Dequantize once per output row; the row of W is shared by every row of x.
  std::vector<float> wrow(static_cast<size_t>(w.in));
  std::vector<double> acc(static_cast<size_t>(o.rows));
  for (int64_t n = 0; n < w.out; ++n) {
    for (int64_t k = 0; k < w.in; ++k) wrow[static_cast<size_t>(k)] = weight_at(w, n, k);
    for (int64_t m = 0; m < o.rows; ++m) {
      double s = 0;
      for (int64_t k = 0; k < w.in; ++k) s += static_cast<double>(xr.get(m, k)) * wrow[static_cast<size_t>(k)];
      acc[static_cast<size_t>(m)] = s;
    }
    const double b = bias ? load_as_float(bias->data, bias->dtype, static_cast<size_t>(n)) : 0.0;
    for (int64_t m = 0; m < o.rows; ++m) o.set(m, n, static_cast<float>(acc[static_cast<size_t>(m)] + b));
  }
}

namespace {

// The factors of row m's adapter, or null when the row has none.
const ops::LoraFactors* row_factors(const ops::LoraArgs& args, int64_t m) {
  const int32_t* slots = args.host_row_slot ? args.host_row_slot : args.row_slot;
  const int32_t slot = slots[m];
  if (slot < 0) return nullptr;
  NB_CHECK(static_cast<size_t>(slot) < args.slots.size(), "LoRA: row %lld names slot %d, only %zu slots",
           static_cast<long long>(m), slot, args.slots.size());
  const ops::LoraFactors& f = args.slots[static_cast<size_t>(slot)];
  if (f.rank <= 0) return nullptr;
  NB_CHECK(f.rank <= args.max_rank && f.a && f.b, "LoRA: slot %d rank %d exceeds max_rank %d or has no factors", slot,
           f.rank, args.max_rank);
  return &f;
}

}  // namespace

void lora_shrink(TensorView tmp, TensorView x, const ops::LoraArgs& args) {
  const Rows t = as_rows(tmp), xr = as_rows(x);
  NB_CHECK(t.rows == xr.rows && t.cols >= args.max_rank && t.dtype == DType::kF32, "lora_shrink: tmp %s, x %s",
           shape_to_string(tmp.shape).c_str(), shape_to_string(x.shape).c_str());
  const int64_t k_dim = xr.cols;
  for (int64_t m = 0; m < xr.rows; ++m) {
    const ops::LoraFactors* f = row_factors(args, m);
    if (!f) continue;
    for (int r = 0; r < f->rank; ++r) {  // A: [rank, K]
      double s = 0;
      for (int64_t k = 0; k < k_dim; ++k)
        s += static_cast<double>(xr.get(m, k)) * load_as_float(f->a, args.dtype, static_cast<size_t>(r * k_dim + k));
      t.set(m, r, static_cast<float>(s));
    }
  }
}

void lora_expand(TensorView y, TensorView tmp, const ops::LoraArgs& args) {
  const Rows yr = as_rows(y), t = as_rows(tmp);
  NB_CHECK(t.rows == yr.rows && t.cols >= args.max_rank, "lora_expand: y %s, tmp %s", shape_to_string(y.shape).c_str(),
           shape_to_string(tmp.shape).c_str());
  for (int64_t m = 0; m < yr.rows; ++m) {
    const ops::LoraFactors* f = row_factors(args, m);
    if (!f) continue;
    for (int64_t n = 0; n < yr.cols; ++n) {  // B: [N, rank]
      double s = 0;
      for (int r = 0; r < f->rank; ++r)
        s += static_cast<double>(t.get(m, r)) * load_as_float(f->b, args.dtype, static_cast<size_t>(n * f->rank + r));
      // PEFT: result + lora_B(lora_A(x)) * scaling, in F32.
      yr.set(m, n, yr.get(m, n) + static_cast<float>(s) * f->scaling);
    }
  }
}

}  // namespace nb::cpu::ref
