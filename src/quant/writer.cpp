#include "quant/writer.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <system_error>

#include <nlohmann/json.hpp>

#include "core/log.h"
#include "core/mmap.h"
#include "io/safetensors.h"
#include "quant/compressed_tensors.h"
#include "quant/match.h"

namespace nb::quant {

namespace fs = std::filesystem;
using OrderedJson = nlohmann::ordered_json;

namespace {

// Routers and gates that vLLM builds unquantized: ignored whenever the checkpoint has them.
const char* const kRouterSelectors[] = {"re:.*mlp.gate$", "re:.*block_sparse_moe.gate$", "re:.*shared_expert_gate$"};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A 2-D float `X.weight` whose module is not an embedding or a norm: a Linear.
bool is_linear_weight(const TensorInfo& t) {
  if (t.shape.size() != 2 || !ends_with(t.name, ".weight")) return false;
  if (t.dtype != DType::kBF16 && t.dtype != DType::kF16 && t.dtype != DType::kF32) return false;
  const std::string module = t.name.substr(0, t.name.size() - 7);
  size_t start = 0;
  while (start <= module.size()) {
    size_t dot = module.find('.', start);
    std::string part = module.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (part.find("embed") != std::string::npos || part.find("norm") != std::string::npos || part == "wte" ||
        part == "wpe")
      return false;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return true;
}

struct Plan {
  std::vector<std::string> ignore;           // written to config.json
  std::set<std::string> quantized;  // names of the weights to quantize
};

Result<Plan> make_plan(const Checkpoint& ck, const QuantizeCheckpointOptions& opt) {
  Plan plan;
  std::vector<const TensorInfo*> linears;
  for (const auto& name : ck.names())
    if (is_linear_weight(*ck.find(name))) linears.push_back(ck.find(name));
  auto module_of = [](const TensorInfo* t) { return t->name.substr(0, t->name.size() - 7); };
  plan.ignore.push_back("lm_head");
  for (const char* r : kRouterSelectors) {
    NB_ASSIGN_OR_RETURN(ModuleSelector sel, ModuleSelector::compile(r, "default ignore list"));
    for (const TensorInfo* t : linears)
      if (sel.matches(module_of(t), {"Linear"})) {
        plan.ignore.push_back(r);
        break;
      }
  }
  for (const auto& s : opt.ignore)
    if (std::find(plan.ignore.begin(), plan.ignore.end(), s) == plan.ignore.end()) plan.ignore.push_back(s);
  std::vector<ModuleSelector> selectors;
  for (const auto& s : plan.ignore) {
    NB_ASSIGN_OR_RETURN(ModuleSelector sel, ModuleSelector::compile(s, "--ignore"));
    selectors.push_back(std::move(sel));
  }
  for (const TensorInfo* t : linears) {
    const std::string module = module_of(t);
    bool ignored = false;
    for (const auto& sel : selectors) ignored = ignored || sel.matches(module, {"Linear"});
    if (ignored) continue;
    if (opt.spec.strategy == QuantStrategy::kGroup && t->shape[1] % opt.spec.group_size != 0)
      return invalid_argument(strformat("%s: %s: in=%lld is not a multiple of the group size %lld (choose another "
                                        "--group-size, or leave it unquantized with --ignore %s)",
                                        ck.location().c_str(), t->name.c_str(), static_cast<long long>(t->shape[1]),
                                        static_cast<long long>(opt.spec.group_size), module.c_str()));
    plan.quantized.insert(t->name);
  }
  return plan;
}

Status prepare_output_dir(const std::string& in_dir, const std::string& out_dir) {
  std::error_code ec;
  if (fs::exists(out_dir, ec)) {
    if (!fs::is_directory(out_dir, ec)) return invalid_argument(out_dir + ": exists and is not a directory");
    if (fs::equivalent(in_dir, out_dir, ec)) return invalid_argument(out_dir + ": the output must differ from the input");
    if (!fs::is_empty(out_dir, ec)) return invalid_argument(out_dir + ": the output directory is not empty");
    return Status::ok();
  }
  if (!fs::create_directories(out_dir, ec))
    return io_error(strformat("%s: cannot create directory: %s", out_dir.c_str(), ec.message().c_str()));
  return Status::ok();
}

// Every regular file of in_dir that is not a weight file or config.json (tokenizer, chat template,
// generation config, ...).
Result<std::vector<std::string>> copy_other_files(const std::string& in_dir, const std::string& out_dir) {
  std::vector<std::string> copied;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(in_dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file() || ends_with(name, ".safetensors") || name == "model.safetensors.index.json" ||
        name == "config.json")
      continue;
    if (!fs::copy_file(e.path(), fs::path(out_dir) / name, ec))
      return io_error(strformat("%s: cannot copy to %s: %s", e.path().c_str(), out_dir.c_str(), ec.message().c_str()));
    copied.push_back(name);
  }
  if (ec) return io_error(strformat("%s: cannot list: %s", in_dir.c_str(), ec.message().c_str()));
  std::sort(copied.begin(), copied.end());
  return copied;
}

Result<OrderedJson> read_config(const std::string& in_dir) {
  const std::string path = path_join(in_dir, "config.json");
  NB_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  OrderedJson j = OrderedJson::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return format_error(path + ": expected a JSON object");
  if (j.contains("quantization_config") && !j["quantization_config"].is_null())
    return invalid_argument(strformat("%s: the model is already quantized (quantization_config is present)",
                                      path.c_str()));
  if (file_exists(path_join(in_dir, "quantize_config.json")))
    return invalid_argument(in_dir + ": the model is already quantized (quantize_config.json is present)");
  return j;
}

Status write_tensors(const Checkpoint& ck, const Plan& plan, const std::string& out_dir,
                     const QuantizeCheckpointOptions& opt) {
  SafetensorsWriter writer(out_dir, opt.max_shard_bytes);
  const std::vector<std::string> names = ck.names();
  Progress progress("quantizing", static_cast<int64_t>(names.size()));
  int64_t done = 0;
  for (const auto& name : names) {
    const TensorInfo& t = *ck.find(name);
    if (!plan.quantized.count(name)) {
      NB_RETURN_IF_ERROR(writer.add(name, t.dtype, t.shape, t.data));
    } else {
      HostTensor w = copy_tensor(t, t.shape);  // aligned copy of the (possibly unaligned) mapped data
      Result<QuantizedWeight> q = quantize_rtn(w.view(), opt.spec);
      if (!q.is_ok()) return q.status().with_context(ck.location() + ": " + name + ": ");
      for (const NamedTensor& nt : compressed_tensors_tensors(name.substr(0, name.size() - 7), *q))
        NB_RETURN_IF_ERROR(writer.add(nt.name, nt.dtype, nt.shape, nt.data.data()));
    }
    if (opt.progress) progress.update(++done);
  }
  if (opt.progress) progress.finish();
  return writer.finish();
}

}  // namespace

std::string quantization_config_json(const QuantizeCheckpointOptions& opt, const std::vector<std::string>& ignore) {
  const QuantizeSpec& s = opt.spec;
  OrderedJson weights = {
      {"num_bits", s.bits},
      {"type", "int"},
      {"symmetric", s.symmetric},
      {"group_size", s.strategy == QuantStrategy::kGroup ? OrderedJson(s.group_size) : OrderedJson(nullptr)},
      {"strategy", strategy_name(s.strategy)},
      {"block_structure", nullptr},
      {"dynamic", false},
      {"actorder", nullptr},
      {"observer", "minmax"},
      {"observer_kwargs", OrderedJson::object()},
  };
  OrderedJson group = {{"targets", {"Linear"}},           {"weights", weights}, {"input_activations", nullptr},
                       {"output_activations", nullptr}, {"format", "pack-quantized"}};
  OrderedJson q = {
      {"quant_method", "compressed-tensors"},
      {"format", "pack-quantized"},
      {"version", opt.version},
      {"quantization_status", "compressed"},
      {"config_groups", {{"group_0", group}}},
      {"ignore", ignore},
      {"kv_cache_scheme", nullptr},
      {"global_compression_ratio", nullptr},
      {"sparsity_config", OrderedJson::object()},
      {"transform_config", OrderedJson::object()},
  };
  return q.dump();
}

Result<QuantizeCheckpointReport> quantize_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                                     const QuantizeCheckpointOptions& opt) {
  const QuantizeSpec& s = opt.spec;
  if (s.bits != 4 && s.bits != 8) return invalid_argument(strformat("bits %d: expected 4 or 8", s.bits));
  if (s.strategy == QuantStrategy::kGroup && s.group_size <= 0)
    return invalid_argument(strformat("group size %lld: expected > 0 (or channel)", static_cast<long long>(s.group_size)));
  NB_ASSIGN_OR_RETURN(OrderedJson config, read_config(in_dir));
  NB_ASSIGN_OR_RETURN(Checkpoint ck, Checkpoint::open_dir(in_dir));
  NB_ASSIGN_OR_RETURN(Plan plan, make_plan(ck, opt));
  NB_RETURN_IF_ERROR(prepare_output_dir(in_dir, out_dir));
  NB_RETURN_IF_ERROR(write_tensors(ck, plan, out_dir, opt));
  config["quantization_config"] = OrderedJson::parse(quantization_config_json(opt, plan.ignore));
  NB_RETURN_IF_ERROR(write_text_file(path_join(out_dir, "config.json"), config.dump(2) + "\n"));
  QuantizeCheckpointReport report;
  NB_ASSIGN_OR_RETURN(report.files, copy_other_files(in_dir, out_dir));
  report.quantized = static_cast<int64_t>(plan.quantized.size());
  report.copied = static_cast<int64_t>(ck.names().size()) - report.quantized;
  report.ignore = plan.ignore;
  return report;
}

}  // namespace nb::quant
