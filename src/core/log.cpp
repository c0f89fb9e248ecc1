#include "core/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace nb {

namespace {
LogLevel initial_level() {
  const char* env = std::getenv("NIBBLE_LOG");
  if (!env) return LogLevel::kInfo;
  if (!std::strcmp(env, "debug")) return LogLevel::kDebug;
  if (!std::strcmp(env, "warn")) return LogLevel::kWarn;
  if (!std::strcmp(env, "error")) return LogLevel::kError;
  return LogLevel::kInfo;
}
std::atomic<int> g_level{static_cast<int>(initial_level())};
std::mutex g_log_mu;
const char* level_tag(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warning";
    case LogLevel::kError: return "error";
  }
  return "";
}
}  // namespace

void set_log_level(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load()); }

void log_message(LogLevel level, const std::string& message) {
  if (static_cast<int>(level) < g_level.load()) return;
  std::lock_guard<std::mutex> lock(g_log_mu);
  std::fprintf(stderr, "nibble %s: %s\n", level_tag(level), message.c_str());
}

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)), total_(total), tty_(isatty(STDERR_FILENO) != 0) {}

void Progress::update(int64_t done) {
  if (log_level() > LogLevel::kInfo || total_ <= 0) return;
  int pct = static_cast<int>(100 * done / total_);
  if (pct == last_percent_) return;
  // On a terminal redraw in place; otherwise print every 10%.
  if (!tty_ && pct / 10 == last_percent_ / 10 && last_percent_ >= 0) return;
  last_percent_ = pct;
  std::lock_guard<std::mutex> lock(g_log_mu);
  std::fprintf(stderr, tty_ ? "\r%s %lld/%lld (%d%%)" : "%s %lld/%lld (%d%%)\n", label_.c_str(),
               static_cast<long long>(done), static_cast<long long>(total_), pct);
  std::fflush(stderr);
}

void Progress::finish() {
  update(total_);
  if (tty_ && log_level() <= LogLevel::kInfo && total_ > 0) std::fprintf(stderr, "\n");
}

}  // namespace nb
