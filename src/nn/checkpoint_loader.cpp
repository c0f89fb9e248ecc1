#include "nn/checkpoint_loader.h"

#include <cstring>

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
    // A tied output layer reuses an embedding table: always a plain weight [out, in].
    if (with_bias) return internal_error("a tied Linear has no bias");
    NB_ASSIGN_OR_RETURN(const TensorInfo* t, checkpoint_.get(source_module + ".weight"));
    Shape want{linear.out_features(), linear.in_features()};
    if (t->shape != want || !is_float_dtype(t->dtype) || t->dtype == DType::kF64)
      return format_error(strformat("%s: tensor '%s' (tied to %s): expected a BF16/F16/F32 tensor of shape %s, got %s %s",
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
