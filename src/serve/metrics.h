// Server metrics in the Prometheus text format (version 0.0.4), all named nibble_*: what the HTTP
// layer measures (latency histograms, requests by final status, HTTP responses by code) plus the
// engine's state from Service::stats() (running/waiting, KV blocks, prefix cache, adapters).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "serve/service.h"

namespace nb::serve {

// Label values escaped for the text format (\\, \", \n).
std::string prometheus_escape(const std::string& value);
// Numbers as Prometheus reads them: shortest round-trip form, +Inf, -Inf, NaN.
std::string prometheus_number(double value);

// A cumulative histogram over fixed upper bounds (seconds). Thread-safe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // Appends the # HELP / # TYPE lines and the _bucket/_sum/_count samples.
  void render(std::string* out, const std::string& name, const std::string& help) const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// One finished generate request (one choice of an API request), as the HTTP layer saw it.
struct RequestRecord {
  std::string status;       // "stop" | "length" | "abort" | "error"
  double e2e_seconds = 0;   // arrival to last token
  double ttft_seconds = -1; // arrival to first token; < 0: no token came
  double tpot_seconds = -1; // mean time between tokens after the first; < 0: fewer than 2 tokens
};

class ServerMetrics {
 public:
  ServerMetrics();
  void record_request(const RequestRecord& record);
  // Every HTTP response: route ("/v1/completions", ...; "other" for unknown paths) and status code.
  void record_response(const std::string& route, int code);
  // The whole /metrics page.
  std::string render(const ServiceStats& stats) const;

 private:
  Histogram ttft_, tpot_, e2e_;
  mutable std::mutex mu_;
  std::map<std::string, int64_t> requests_by_status_;
  std::map<std::pair<std::string, int>, int64_t> responses_;
};

}  // namespace nb::serve
