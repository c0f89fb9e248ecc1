// `nibble inspect`: what a checkpoint holds — architecture, layers, every module's quantization and
// logical shape, and the totals (logical parameters, bytes on disk, bytes on the device).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "quant/quant_config.h"

namespace nb::quant {

struct ModuleReport {
  LinearLayout layout;       // shape, scheme, dtype, tensors
  uint64_t disk_bytes = 0;   // the module's tensors as stored
  uint64_t device_bytes = 0;  // canonical form: INT4 codes ceil(in/2) (INT8: in) bytes per row + scales +
                             // int8 zero points + int32 g_idx + bias; plain: as stored
};

struct TensorReport {  // a tensor outside every module (norms, router biases, ...)
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t bytes = 0;
};

// What the config says about the layers (when config.json parses as a supported architecture).
struct ArchSummary {
  bool known = false;
  int64_t dense_layers = 0, moe_layers = 0;
  int64_t dense_intermediate = 0;
  int64_t experts = 0, top_k = 0, expert_intermediate = 0, shared_intermediate = 0;
  bool shared_gate = false;    // Qwen2-MoE sigmoid gate on the shared expert
  std::string routing;         // "softmax top-4", "sigmoid top-8 of 4 of 8 groups, bias, x2.5"
  std::string attention;       // "GQA 32/8 heads x 128", "MLA 128 heads, kv_lora_rank 512, rope 64"
  int64_t kv_elements_per_token = 0;  // all layers; bytes = this x the activation dtype's size
  std::string kv_layout;       // "32 layers x 8 KV heads x (128 + 128)" / "61 layers x (512 latent + 64 rope key)"
};

struct ModelReport {
  std::string model_dir;
  ArchSummary summary;
  std::string architecture;  // architectures[0]; empty when config.json has none
  std::string model_type;
  int64_t num_layers = 0;    // num_hidden_layers, else counted from "layers.N." names
  QuantMethod method = QuantMethod::kNone;
  std::string quant_source;
  std::vector<ModuleReport> modules;  // sorted by name
  std::vector<TensorReport> other;
  int64_t parameters = 0;       // logical: out*in (+ bias) per module, numel of other tensors
  uint64_t tensor_bytes = 0;    // sum of tensor data sizes
  uint64_t file_bytes = 0;      // sum of the safetensors file sizes
  uint64_t device_bytes = 0;
};

// Modules are the prefixes P with P.weight_packed, P.qweight, or a 2-D P.weight; quantized ones are
// fully checked (describe_linear), so an inconsistent checkpoint fails here with the loader's message.
Result<ModelReport> inspect_model(const std::string& model_dir);
std::string report_json(const ModelReport& r);  // machine-readable (--json)
std::string report_text(const ModelReport& r);  // human-readable

}  // namespace nb::quant
