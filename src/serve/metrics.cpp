#include "serve/metrics.h"

#include <charconv>
#include <cmath>

#include "core/status.h"

namespace nb::serve {

std::string prometheus_escape(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string prometheus_number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  return ec == std::errc() ? std::string(buf, end) : strformat("%.17g", value);
}

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t b = 0;
  while (b < bounds_.size() && value > bounds_[b]) ++b;
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[b];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string* out, const std::string& name, const std::string& help) const {
  std::lock_guard<std::mutex> lock(mu_);
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  uint64_t cumulative = 0;
  for (size_t b = 0; b <= bounds_.size(); ++b) {
    cumulative += counts_[b];
    const std::string le = b < bounds_.size() ? prometheus_number(bounds_[b]) : "+Inf";
    *out += name + "_bucket{le=\"" + le + "\"} " + std::to_string(cumulative) + "\n";
  }
  *out += name + "_sum " + prometheus_number(sum_) + "\n";
  *out += name + "_count " + std::to_string(count_) + "\n";
}

namespace {

// Seconds, from 1 ms to 10 min: first tokens, whole requests and per-token gaps all fit.
std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
          2.5,   5.0,    7.5,   10.0, 20.0,  30.0, 40.0,  60.0, 120.0, 300.0, 600.0};
}

void family(std::string* out, const std::string& name, const char* type, const std::string& help) {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void sample(std::string* out, const std::string& name, const std::string& labels, double value) {
  out->append(name);
  if (!labels.empty()) out->append("{").append(labels).append("}");
  out->append(" ").append(prometheus_number(value)).append("\n");
}

std::string label(const char* key, const std::string& value) {
  return std::string(key) + "=\"" + prometheus_escape(value) + "\"";
}

void render_adapters(std::string* out, const std::vector<AdapterInfo>& adapters) {
  family(out, "nibble_adapter_requests_total", "counter", "Requests submitted with the adapter.");
  for (const AdapterInfo& a : adapters)
    sample(out, "nibble_adapter_requests_total", label("adapter", a.name), static_cast<double>(a.requests));
  family(out, "nibble_adapter_generation_tokens_total", "counter", "Tokens generated with the adapter.");
  for (const AdapterInfo& a : adapters)
    sample(out, "nibble_adapter_generation_tokens_total", label("adapter", a.name),
           static_cast<double>(a.generated_tokens));
  family(out, "nibble_adapter_loads_total", "counter", "Reads of the adapter from disk (first load and reloads).");
  for (const AdapterInfo& a : adapters)
    sample(out, "nibble_adapter_loads_total", label("adapter", a.name), static_cast<double>(a.loads));
  family(out, "nibble_adapter_evictions_total", "counter", "Evictions of the adapter from host memory.");
  for (const AdapterInfo& a : adapters)
    sample(out, "nibble_adapter_evictions_total", label("adapter", a.name), static_cast<double>(a.evictions));
  family(out, "nibble_adapter_residency", "gauge",
         "Where the adapter is: 1 for its current residency (gpu = device slot, cpu = host memory, disk = evicted).");
  for (const AdapterInfo& a : adapters)
    for (const char* where : {"gpu", "cpu", "disk"})
      sample(out, "nibble_adapter_residency", label("adapter", a.name) + "," + label("residency", where),
             a.residency == where ? 1 : 0);
  family(out, "nibble_adapter_pinned", "gauge", "1 when the adapter is pinned in memory.");
  for (const AdapterInfo& a : adapters)
    sample(out, "nibble_adapter_pinned", label("adapter", a.name), a.pinned ? 1 : 0);
}

}  // namespace

ServerMetrics::ServerMetrics() : ttft_(latency_buckets()), tpot_(latency_buckets()), e2e_(latency_buckets()) {}

void ServerMetrics::record_request(const RequestRecord& r) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++requests_by_status_[r.status];
  }
  e2e_.observe(r.e2e_seconds);
  if (r.ttft_seconds >= 0) ttft_.observe(r.ttft_seconds);
  if (r.tpot_seconds >= 0) tpot_.observe(r.tpot_seconds);
}

void ServerMetrics::record_response(const std::string& route, int code) {
  std::lock_guard<std::mutex> lock(mu_);
  ++responses_[{route, code}];
}

std::string ServerMetrics::render(const ServiceStats& s) const {
  std::string out;
  out.reserve(8192);
  {
    std::lock_guard<std::mutex> lock(mu_);
    family(&out, "nibble_requests_total", "counter",
           "Generate requests (one per choice) by final status: stop, length, abort (cancelled or client gone), error.");
    for (const char* status : {"stop", "length", "abort", "error"}) {
      auto it = requests_by_status_.find(status);
      sample(&out, "nibble_requests_total", label("status", status),
             it == requests_by_status_.end() ? 0.0 : static_cast<double>(it->second));
    }
    family(&out, "nibble_http_responses_total", "counter", "HTTP responses by route and status code.");
    for (const auto& [key, n] : responses_)
      sample(&out, "nibble_http_responses_total", label("route", key.first) + "," + label("code", std::to_string(key.second)),
             static_cast<double>(n));
  }
  family(&out, "nibble_prompt_tokens_total", "counter", "Prompt tokens processed.");
  sample(&out, "nibble_prompt_tokens_total", "", static_cast<double>(s.prompt_tokens));
  family(&out, "nibble_generation_tokens_total", "counter", "Tokens generated.");
  sample(&out, "nibble_generation_tokens_total", "", static_cast<double>(s.generated_tokens));
  ttft_.render(&out, "nibble_time_to_first_token_seconds", "Time from arrival to the first generated token.");
  tpot_.render(&out, "nibble_time_per_output_token_seconds", "Mean time between generated tokens after the first, per request.");
  e2e_.render(&out, "nibble_e2e_request_latency_seconds", "Time from arrival to the end of the request.");
  family(&out, "nibble_num_requests_running", "gauge", "Sequences in the running batch.");
  sample(&out, "nibble_num_requests_running", "", s.running);
  family(&out, "nibble_num_requests_waiting", "gauge", "Sequences waiting to be scheduled.");
  sample(&out, "nibble_num_requests_waiting", "", s.waiting);
  family(&out, "nibble_kv_blocks_used", "gauge", "KV-cache blocks in use.");
  sample(&out, "nibble_kv_blocks_used", "", s.kv_blocks_used);
  family(&out, "nibble_kv_blocks_total", "gauge", "KV-cache blocks in all.");
  sample(&out, "nibble_kv_blocks_total", "", s.kv_blocks_total);
  family(&out, "nibble_kv_cache_usage_ratio", "gauge", "Fraction of the KV-cache blocks in use.");
  sample(&out, "nibble_kv_cache_usage_ratio", "",
         s.kv_blocks_total > 0 ? static_cast<double>(s.kv_blocks_used) / s.kv_blocks_total : 0.0);
  family(&out, "nibble_prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.");
  sample(&out, "nibble_prefix_cache_queries_total", "", static_cast<double>(s.prefix_cache_queries));
  family(&out, "nibble_prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.");
  sample(&out, "nibble_prefix_cache_hits_total", "", static_cast<double>(s.prefix_cache_hits));
  family(&out, "nibble_prefix_cache_hit_rate", "gauge", "Prefix-cache hits / queries since start (tokens).");
  sample(&out, "nibble_prefix_cache_hit_rate", "",
         s.prefix_cache_queries > 0 ? static_cast<double>(s.prefix_cache_hits) / static_cast<double>(s.prefix_cache_queries)
                                    : 0.0);
  family(&out, "nibble_preemptions_total", "counter", "Sequences preempted (KV cache full) and recomputed later.");
  sample(&out, "nibble_preemptions_total", "", static_cast<double>(s.preemptions));
  render_adapters(&out, s.adapters);
  return out;
}

}  // namespace nb::serve
