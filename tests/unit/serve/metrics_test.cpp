// The Prometheus text: escaping, numbers, cumulative histogram buckets, and every family /metrics
// promises (checked line by line, with a tiny parser of the text format).
#include "serve/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <sstream>

namespace nb::serve {
namespace {

// sample line "name{labels} value" -> value, keyed by "name{labels}".
std::map<std::string, double> samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

TEST(Metrics, EscapeAndNumbers) {
  EXPECT_EQ(prometheus_escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(prometheus_number(0.25), "0.25");
  EXPECT_EQ(prometheus_number(3), "3");
  EXPECT_EQ(prometheus_number(1e-9), "1e-09");
  EXPECT_EQ(prometheus_number(INFINITY), "+Inf");
  EXPECT_EQ(prometheus_number(-INFINITY), "-Inf");
  EXPECT_EQ(prometheus_number(NAN), "NaN");
}

TEST(Metrics, HistogramIsCumulative) {
  Histogram h({0.1, 1.0});
  for (double v : {0.05, 0.1, 0.5, 2.0, 3.0}) h.observe(v);
  std::string out;
  h.render(&out, "x_seconds", "help text");
  EXPECT_NE(out.find("# HELP x_seconds help text\n# TYPE x_seconds histogram\n"), std::string::npos);
  auto s = samples(out);
  EXPECT_EQ(s["x_seconds_bucket{le=\"0.1\"}"], 2);  // le is inclusive
  EXPECT_EQ(s["x_seconds_bucket{le=\"1\"}"], 3);
  EXPECT_EQ(s["x_seconds_bucket{le=\"+Inf\"}"], 5);
  EXPECT_EQ(s["x_seconds_count"], 5);
  EXPECT_DOUBLE_EQ(s["x_seconds_sum"], 5.65);
}

TEST(Metrics, PageHasEveryFamily) {
  ServerMetrics m;
  m.record_request({"stop", 0.5, 0.1, 0.02});
  m.record_request({"abort", 0.2, -1, -1});
  m.record_request({"length", 1.0, 0.2, 0.05});
  m.record_response("/v1/completions", 200);
  m.record_response("/v1/completions", 400);
  m.record_response("/v1/completions", 400);
  ServiceStats st;
  st.running = 3;
  st.waiting = 2;
  st.kv_blocks_total = 100;
  st.kv_blocks_used = 25;
  st.prefix_cache_queries = 40;
  st.prefix_cache_hits = 10;
  st.prompt_tokens = 123;
  st.generated_tokens = 456;
  st.adapters = {AdapterInfo{"kjv", "/a/kjv", "gpu", true, 7, 70, 2, 1}, AdapterInfo{"we\"ird", "/a/w", "disk", false, 0, 0, 1, 1}};
  const std::string text = m.render(st);
  auto s = samples(text);
  EXPECT_EQ(s["nibble_requests_total{status=\"stop\"}"], 1);
  EXPECT_EQ(s["nibble_requests_total{status=\"abort\"}"], 1);
  EXPECT_EQ(s["nibble_requests_total{status=\"error\"}"], 0);
  EXPECT_EQ(s["nibble_http_responses_total{route=\"/v1/completions\",code=\"400\"}"], 2);
  EXPECT_EQ(s["nibble_prompt_tokens_total"], 123);
  EXPECT_EQ(s["nibble_generation_tokens_total"], 456);
  EXPECT_EQ(s["nibble_time_to_first_token_seconds_count"], 2);  // the aborted one had no token
  EXPECT_EQ(s["nibble_time_per_output_token_seconds_count"], 2);
  EXPECT_EQ(s["nibble_e2e_request_latency_seconds_count"], 3);
  EXPECT_EQ(s["nibble_num_requests_running"], 3);
  EXPECT_EQ(s["nibble_num_requests_waiting"], 2);
  EXPECT_EQ(s["nibble_kv_blocks_used"], 25);
  EXPECT_EQ(s["nibble_kv_blocks_total"], 100);
  EXPECT_DOUBLE_EQ(s["nibble_kv_cache_usage_ratio"], 0.25);
  EXPECT_DOUBLE_EQ(s["nibble_prefix_cache_hit_rate"], 0.25);
  EXPECT_EQ(s["nibble_adapter_requests_total{adapter=\"kjv\"}"], 7);
  EXPECT_EQ(s["nibble_adapter_generation_tokens_total{adapter=\"kjv\"}"], 70);
  EXPECT_EQ(s["nibble_adapter_loads_total{adapter=\"kjv\"}"], 2);
  EXPECT_EQ(s["nibble_adapter_evictions_total{adapter=\"we\\\"ird\"}"], 1);
  EXPECT_EQ(s["nibble_adapter_residency{adapter=\"kjv\",residency=\"gpu\"}"], 1);
  EXPECT_EQ(s["nibble_adapter_residency{adapter=\"kjv\",residency=\"cpu\"}"], 0);
  EXPECT_EQ(s["nibble_adapter_residency{adapter=\"we\\\"ird\",residency=\"disk\"}"], 1);
  EXPECT_EQ(s["nibble_adapter_pinned{adapter=\"kjv\"}"], 1);
  // Every sample belongs to a family declared with # TYPE before it.
  std::istringstream in(text);
  std::string line, family;
  while (std::getline(in, line)) {
    if (line.rfind("# TYPE ", 0) == 0) {
      family = line.substr(7, line.find(' ', 7) - 7);
    } else if (!line.empty() && line[0] != '#') {
      EXPECT_EQ(line.rfind(family, 0), 0u) << line << " outside " << family;
    }
  }
}

}  // namespace
}  // namespace nb::serve
