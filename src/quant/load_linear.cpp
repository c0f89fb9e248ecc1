// load_linear / describe_linear: the scheme decides the format; plain weights and biases here.
#include "quant/awq.h"
#include "quant/checks.h"
#include "quant/compressed_tensors.h"
#include "quant/gptq.h"
#include "quant/quant_config.h"

namespace nb::quant {

using detail::expect_float;
using detail::expect_shape;
using detail::require;
using detail::tensor_error;

namespace {

// The tensor that proves a module is stored quantized in some format, for mismatch messages.
const TensorInfo* quantized_marker(const Checkpoint& ck, const std::string& prefix) {
  for (const char* s : {".weight_packed", ".qweight"})
    if (const TensorInfo* t = ck.find(prefix + s)) return t;
  return nullptr;
}

Result<LinearLayout> describe_plain(const Checkpoint& ck, const QuantConfig& cfg, const std::string& prefix,
                                    int64_t out, int64_t in) {
  const TensorInfo* w = ck.find(prefix + ".weight");
  if (!w) {
    if (const TensorInfo* q = quantized_marker(ck, prefix))
      return format_error(strformat("%s: %s is stored quantized (%s) but %s leaves module '%s' unquantized",
                                    ck.location().c_str(), prefix.c_str(), q->name.c_str(), cfg.source.c_str(),
                                    prefix.c_str()));
    return require(ck, prefix + ".weight", "plain weight of an unquantized module").status();
  }
  NB_RETURN_IF_ERROR(expect_float(ck, *w));
  if (out <= 0 || in <= 0) {
    if (w->shape.size() != 2) return tensor_error(ck, *w, "expected a 2-D weight [out, in], got " + shape_to_string(w->shape));
    out = w->shape[0];
    in = w->shape[1];
  }
  NB_RETURN_IF_ERROR(expect_shape(ck, *w, {out, in}, "[out, in] from the model config"));
  LinearLayout l;
  l.module = prefix;
  l.out = out;
  l.in = in;
  l.dtype = w->dtype;
  l.source_format = "plain";
  l.tensors = {w->name};
  return l;
}

Result<LinearLayout> describe_quantized(const Checkpoint& ck, const QuantConfig& cfg, const QuantScheme& s,
                                        const std::string& prefix, int64_t out, int64_t in) {
  // GPTQ and AWQ configs name no modules: a module the quantizer left alone (MoE routers, Qwen2-MoE's
  // shared_expert_gate: GPTQModel skips them, vLLM's models never quantize them) is stored plain.
  // compressed-tensors says per module what is quantized, so a plain weight there is a mismatch.
  if (!quantized_marker(ck, prefix) && ck.find(prefix + ".weight") &&
      (s.method == QuantMethod::kGptq || s.method == QuantMethod::kAwq))
    return describe_plain(ck, QuantConfig{}, prefix, out, in);
  if (!quantized_marker(ck, prefix) && ck.find(prefix + ".weight"))
    return format_error(strformat("%s: %s: %s quantizes it as %s, but the checkpoint holds a plain %s.weight",
                                  ck.location().c_str(), prefix.c_str(), cfg.source.c_str(), s.describe().c_str(),
                                  prefix.c_str()));
  switch (s.method) {
    case QuantMethod::kCompressedTensors: return describe_compressed_tensors(ck, cfg, s, prefix, out, in);
    case QuantMethod::kGptq: return describe_gptq(ck, cfg, prefix, out, in);
    case QuantMethod::kAwq: return describe_awq(ck, cfg, prefix, out, in);
    case QuantMethod::kNone: break;
  }
  return internal_error("describe_quantized without a method");
}

Status check_bias(const Checkpoint& ck, const std::string& prefix, int64_t out, LinearLayout* l) {
  const TensorInfo* b = ck.find(prefix + ".bias");
  if (!b) return Status::ok();
  NB_RETURN_IF_ERROR(expect_float(ck, *b));
  NB_RETURN_IF_ERROR(expect_shape(ck, *b, {out}, "one bias per output feature"));
  l->has_bias = true;
  l->tensors.push_back(b->name);
  return Status::ok();
}

}  // namespace

Result<LinearLayout> describe_linear(const Checkpoint& ckpt, const QuantConfig& config,
                                     const std::string& module_prefix, int64_t expected_out, int64_t expected_in) {
  if ((expected_out > 0) != (expected_in > 0) || expected_out < 0 || expected_in < 0)
    return invalid_argument(strformat("%s: expected shape [%lld, %lld]: give both dimensions or neither",
                                      module_prefix.c_str(), static_cast<long long>(expected_out),
                                      static_cast<long long>(expected_in)));
  std::optional<QuantScheme> s = config.scheme_for(module_prefix);
  Result<LinearLayout> l = s ? describe_quantized(ckpt, config, *s, module_prefix, expected_out, expected_in)
                             : describe_plain(ckpt, config, module_prefix, expected_out, expected_in);
  if (!l.is_ok()) return l;
  NB_RETURN_IF_ERROR(check_bias(ckpt, module_prefix, l->out, &*l));
  return l;
}

Result<LinearWeight> load_linear(const Checkpoint& ckpt, const QuantConfig& config, const std::string& module_prefix,
                                 int64_t expected_out, int64_t expected_in) {
  NB_ASSIGN_OR_RETURN(LinearLayout l, describe_linear(ckpt, config, module_prefix, expected_out, expected_in));
  LinearWeight w;
  w.module = module_prefix;
  w.out = l.out;
  w.in = l.in;
  if (l.scheme) {
    const QuantScheme& s = *l.scheme;
    Result<QuantizedWeight> q = s.method == QuantMethod::kCompressedTensors
                                    ? load_compressed_tensors(ckpt, config, s, module_prefix, l.out, l.in)
                                : s.method == QuantMethod::kGptq ? load_gptq(ckpt, config, module_prefix, l.out, l.in)
                                                                 : load_awq(ckpt, config, module_prefix, l.out, l.in);
    if (!q.is_ok()) return q.status();
    NB_CHECK(q->validate().is_ok(), "%s", q->validate().to_string().c_str());
    w.quantized = std::move(q).value();
  } else {
    w.dense = copy_tensor(*ckpt.find(module_prefix + ".weight"), {l.out, l.in});
  }
  if (l.has_bias) w.bias = copy_tensor(*ckpt.find(module_prefix + ".bias"), {l.out});
  return w;
}

}  // namespace nb::quant
