// Minimal leveled logging to stderr. NIBBLE_LOG=debug|info|warn|error sets the threshold.
#pragma once

#include <string>

#include "core/status.h"

namespace nb {

enum class LogLevel { kDebug = 0, kInfo, kWarn, kError };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_message(LogLevel level, const std::string& message);

// Progress for long work: "loading weights 12/64 (18%)", redrawn in place on a terminal.
class Progress {
 public:
  Progress(std::string label, int64_t total);
  void update(int64_t done);
  void finish();

 private:
  std::string label_;
  int64_t total_;
  int last_percent_ = -1;
  bool tty_;
};

}  // namespace nb

#define NB_LOG_DEBUG(...) ::nb::log_message(::nb::LogLevel::kDebug, ::nb::strformat(__VA_ARGS__))
#define NB_LOG_INFO(...) ::nb::log_message(::nb::LogLevel::kInfo, ::nb::strformat(__VA_ARGS__))
#define NB_LOG_WARN(...) ::nb::log_message(::nb::LogLevel::kWarn, ::nb::strformat(__VA_ARGS__))
#define NB_LOG_ERROR(...) ::nb::log_message(::nb::LogLevel::kError, ::nb::strformat(__VA_ARGS__))
