#include "nn/checkpoint_loader.h"

#include <cstring>

#include "nn/moe.h"

namespace nb::nn {

ops::QuantWeightView quant_view(const quant::QuantizedWeight& w) {
  ops::QuantWeightView v;
  v.out = w.out;
  v.in = w.in;
  v.bits = w.bits;
  v.group_size = w.group_size;
  v.num_groups = w.num_groups;
  v.codes = w.codes.data();
  v.scale_dtype = w.scales.dtype();
  v.scales = w.scales.data();
  v.zeros = w.zeros.empty() ? nullptr : w.zeros.data();
  v.g_idx = w.g_idx.empty() ? nullptr : w.g_idx.data();
  return v;
}

Result<std::unique_ptr<CheckpointLoader>> CheckpointLoader::open(const std::string& model_dir,
                                                                 const std::string& quantization_config,
                                                                 ops::Backend& backend) {
  std::unique_ptr<CheckpointLoader> l(new CheckpointLoader());
  l->backend_ = &backend;
  NB_ASSIGN_OR_RETURN(l->checkpoint_, Checkpoint::open_dir(model_dir));
  if (!quantization_config.empty()) {
    NB_ASSIGN_OR_RETURN(l->quant_, quant::parse_quant_config(quantization_config, model_dir));
  } else {
    NB_ASSIGN_OR_RETURN(l->quant_, quant::load_quant_config(model_dir));
  }
  return l;
}

namespace {
Result<ops::DeviceTensor> upload_host(ops::Backend& b, const HostTensor& t) {
  return ops::upload_tensor(b, t.view());
}
}  // namespace

Status CheckpointLoader::load_linear(Linear& linear, bool with_bias, const std::string& source_module) {
  if (linear.slices().size() != 1)
    return unsupported(strformat("%s: fused Linear loading is not implemented yet", linear.name().c_str()));
  if (!source_module.empty()) {
    // Another module's weight: a tied output layer reusing the embedding table, or a module under its
    // other name (Mixtral's router in transformers-5 naming). Always a plain weight [out, in].
    if (with_bias) return internal_error("a Linear read from another module has no bias");
    NB_ASSIGN_OR_RETURN(const TensorInfo* t, checkpoint_.get(source_module + ".weight"));
    Shape want{linear.out_features(), linear.in_features()};
    if (t->shape != want || !is_float_dtype(t->dtype) || t->dtype == DType::kF64)
      return format_error(strformat("%s: tensor '%s' (read for %s): expected a BF16/F16/F32 tensor of shape %s, got %s %s",
                                    t->file.c_str(), t->name.c_str(), linear.name().c_str(), shape_to_string(want).c_str(),
                                    dtype_name(t->dtype), shape_to_string(t->shape).c_str()));
    HostTensor host(t->dtype, t->shape);
    std::memcpy(host.data(), t->data, t->nbytes());
    NB_ASSIGN_OR_RETURN(auto packed, backend_->pack_dense(host.view()));
    return linear.set_weight(std::move(packed), ops::DeviceBuffer(), DType::kF32);
  }
  const std::string& module = linear.slices()[0].module;
  NB_ASSIGN_OR_RETURN(quant::LinearWeight w,
                      quant::load_linear(checkpoint_, quant_, module, linear.out_features(), linear.in_features()));
  std::unique_ptr<ops::PackedWeight> packed;
  if (w.is_quantized()) {
    NB_ASSIGN_OR_RETURN(packed, backend_->pack_quantized(quant_view(*w.quantized)));
  } else {
    NB_ASSIGN_OR_RETURN(packed, backend_->pack_dense(w.dense.view()));
  }
  ops::DeviceBuffer bias;
  DType bias_dtype = DType::kF32;
  if (with_bias) {
    if (w.bias.empty())
      return format_error(strformat("%s: the model expects %s.bias [%lld], the checkpoint has none (%s)", module.c_str(),
                                    module.c_str(), static_cast<long long>(linear.out_features()),
                                    checkpoint_.location().c_str()));
    bias = ops::upload_buffer(*backend_, w.bias.data(), w.bias.nbytes());
    bias_dtype = w.bias.dtype();
  } else if (!w.bias.empty()) {
    return format_error(strformat("%s: the checkpoint has %s.bias but this architecture's config says no bias (%s)",
                                  module.c_str(), module.c_str(), checkpoint_.location().c_str()));
  }
  return linear.set_weight(std::move(packed), std::move(bias), bias_dtype);
}

Result<QuantStack> stack_experts(const std::vector<quant::QuantizedWeight>& experts,
                                 const std::function<std::string(size_t)>& what) {
  NB_CHECK(!experts.empty(), "stack_experts of no experts");
  const quant::QuantizedWeight& f = experts[0];
  bool any_zeros = false, any_g_idx = false;
  for (size_t e = 0; e < experts.size(); ++e) {
    const quant::QuantizedWeight& w = experts[e];
    if (w.out != f.out || w.in != f.in || w.bits != f.bits || w.group_size != f.group_size ||
        w.num_groups != f.num_groups || w.scale_dtype() != f.scale_dtype())
      return format_error(strformat("%s is %s [%lld, %lld] with %s scales, but %s is %s [%lld, %lld] with %s scales: "
                                    "the experts of one projection must share one quantization scheme",
                                    what(e).c_str(), w.describe().c_str(), static_cast<long long>(w.out),
                                    static_cast<long long>(w.in), dtype_name(w.scale_dtype()), what(0).c_str(),
                                    f.describe().c_str(), static_cast<long long>(f.out), static_cast<long long>(f.in),
                                    dtype_name(f.scale_dtype())));
    any_zeros |= !w.zeros.empty();
    any_g_idx |= !w.g_idx.empty();
  }
  QuantStack st;
  const size_t n = experts.size(), cells = static_cast<size_t>(f.out * f.num_groups);
  const size_t code_bytes = f.codes.size(), scale_bytes = f.scales.nbytes();
  st.codes.resize(n * code_bytes);
  st.scales = HostTensor(f.scale_dtype(), {static_cast<int64_t>(n) * f.out, f.num_groups});
  if (any_zeros) st.zeros.assign(n * cells, 0);  // a symmetric expert among asymmetric ones: zero point 0
  if (any_g_idx) st.g_idx.resize(n * static_cast<size_t>(f.in));
  for (size_t e = 0; e < n; ++e) {
    const quant::QuantizedWeight& w = experts[e];
    std::memcpy(st.codes.data() + e * code_bytes, w.codes.data(), code_bytes);
    std::memcpy(static_cast<uint8_t*>(st.scales.data()) + e * scale_bytes, w.scales.data(), scale_bytes);
    if (!w.zeros.empty()) std::memcpy(st.zeros.data() + e * cells, w.zeros.data(), cells);
    if (any_g_idx)
      for (int64_t k = 0; k < f.in; ++k) st.g_idx[e * static_cast<size_t>(f.in) + static_cast<size_t>(k)] = static_cast<int32_t>(w.group_of(k));
  }
  st.view = quant_view(f);
  st.view.codes = st.codes.data();
  st.view.scales = st.scales.data();
  st.view.zeros = any_zeros ? st.zeros.data() : nullptr;
  st.view.g_idx = any_g_idx ? st.g_idx.data() : nullptr;
  return st;
}

namespace {

// rows [src.offset, src.offset + out) of the 3-D plain tensor [E, src.rows, in] -> [E, out, in]
Result<HostTensor> fused_expert_slice(const Checkpoint& ck, const TensorInfo& t, const ExpertLinear& x) {
  const FusedExpertSource& src = x.fused();
  const int64_t e = x.experts(), out = x.out_features(), in = x.in_features();
  const Shape want{e, src.rows, in};
  if (!is_float_dtype(t.dtype) || t.dtype == DType::kF64)
    return format_error(strformat("%s: tensor '%s': fused 3-D expert weights must be BF16, F16 or F32 (quantized fused "
                                  "expert tensors are not supported), got %s", ck.location().c_str(), t.name.c_str(),
                                  dtype_name(t.dtype)));
  if (t.shape != want)
    return format_error(strformat("%s: tensor '%s': expected shape %s (%lld experts, the config's sizes), got %s",
                                  ck.location().c_str(), t.name.c_str(), shape_to_string(want).c_str(),
                                  static_cast<long long>(e), shape_to_string(t.shape).c_str()));
  HostTensor h(t.dtype, {e, out, in});
  const size_t row = dtype_bytes(t.dtype, static_cast<size_t>(in));
  for (int64_t i = 0; i < e; ++i)
    std::memcpy(static_cast<uint8_t*>(h.data()) + static_cast<size_t>(i * out) * row,
                t.data + static_cast<size_t>(i * src.rows + src.offset) * row, static_cast<size_t>(out) * row);
  return h;
}

}  // namespace

Status CheckpointLoader::load_experts(ExpertLinear& x) {
  const int64_t n = x.experts(), out = x.out_features(), in = x.in_features();
  const bool per_expert = has_module(x.expert_module(0));
  const TensorInfo* fused = x.fused().tensor.empty() ? nullptr : checkpoint_.find(x.fused().tensor);
  if (!per_expert && fused) {
    NB_ASSIGN_OR_RETURN(HostTensor h, fused_expert_slice(checkpoint_, *fused, x));
    NB_ASSIGN_OR_RETURN(auto packed, backend_->pack_dense_experts(h.view()));
    return x.set_weight(std::move(packed));
  }
  if (!per_expert)
    return format_error(strformat("%s: no weights for the experts %s: expected per-expert modules (%s, ...)%s",
                                  checkpoint_.location().c_str(), x.description().c_str(), x.expert_module(0).c_str(),
                                  x.fused().tensor.empty() ? "" : (" or the fused tensor " + x.fused().tensor).c_str()));
  if (has_module(x.expert_module(n)))
    return format_error(strformat("%s: the checkpoint has %s but the config gives %lld experts (0..%lld): config.json "
                                  "and the weights disagree", checkpoint_.location().c_str(), x.expert_module(n).c_str(),
                                  static_cast<long long>(n), static_cast<long long>(n - 1)));
  std::vector<quant::QuantizedWeight> quantized;
  std::vector<HostTensor> dense;
  for (int64_t e = 0; e < n; ++e) {
    const std::string module = x.expert_module(e);
    NB_ASSIGN_OR_RETURN(quant::LinearWeight w, quant::load_linear(checkpoint_, quant_, module, out, in));
    if (!w.bias.empty())
      return format_error(strformat("%s: %s.bias: experts have no bias in this architecture", checkpoint_.location().c_str(),
                                    module.c_str()));
    if (e > 0 && w.is_quantized() != !quantized.empty())
      return format_error(strformat("%s: %s is %s but %s is %s: the experts of one projection must share one scheme",
                                    checkpoint_.location().c_str(), module.c_str(),
                                    w.is_quantized() ? "quantized" : "plain", x.expert_module(0).c_str(),
                                    quantized.empty() ? "plain" : "quantized"));
    if (w.is_quantized()) {
      quantized.push_back(std::move(*w.quantized));
    } else {
      if (!dense.empty() && w.dense.dtype() != dense[0].dtype())
        return format_error(strformat("%s: %s is %s but %s is %s", checkpoint_.location().c_str(), module.c_str(),
                                      dtype_name(w.dense.dtype()), x.expert_module(0).c_str(),
                                      dtype_name(dense[0].dtype())));
      dense.push_back(std::move(w.dense));
    }
  }
  std::unique_ptr<ops::PackedWeight> packed;
  if (!quantized.empty()) {
    NB_ASSIGN_OR_RETURN(QuantStack st, stack_experts(quantized, [&](size_t e) { return x.expert_module(static_cast<int64_t>(e)); }));
    quantized.clear();
    NB_ASSIGN_OR_RETURN(packed, backend_->pack_quantized_experts(st.view, n));
  } else {
    HostTensor h(dense[0].dtype(), {n, out, in});
    const size_t bytes = dense[0].nbytes();
    for (int64_t e = 0; e < n; ++e)
      std::memcpy(static_cast<uint8_t*>(h.data()) + static_cast<size_t>(e) * bytes, dense[static_cast<size_t>(e)].data(), bytes);
    dense.clear();
    NB_ASSIGN_OR_RETURN(packed, backend_->pack_dense_experts(h.view()));
  }
  return x.set_weight(std::move(packed));
}

bool CheckpointLoader::has_module(const std::string& module) const {
  const std::string prefix = module + ".";
  for (const std::string& name : checkpoint_.names())
    if (name.compare(0, prefix.size(), prefix) == 0) return true;
  return false;
}

Result<ops::DeviceTensor> CheckpointLoader::load_dense(const std::string& name, const Shape& shape) {
  NB_ASSIGN_OR_RETURN(const TensorInfo* t, checkpoint_.get(name));
  if (t->shape != shape)
    return format_error(strformat("%s: tensor '%s': expected shape %s, got %s", t->file.c_str(), name.c_str(),
                                  shape_to_string(shape).c_str(), shape_to_string(t->shape).c_str()));
  if (!is_float_dtype(t->dtype) || t->dtype == DType::kF64)
    return format_error(strformat("%s: tensor '%s': expected BF16, F16 or F32, got %s", t->file.c_str(), name.c_str(),
                                  dtype_name(t->dtype)));
  // Copy out of the (possibly unaligned) mapping before uploading.
  HostTensor host(t->dtype, t->shape);
  std::memcpy(host.data(), t->data, t->nbytes());
  return upload_host(*backend_, host);
}

}  // namespace nb::nn
