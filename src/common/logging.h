// The library's logger. DDP_LOG_LEVEL=ERROR|WARN|INFO|DEBUG chooses what is printed
// (default WARN); DDP_DEBUG=OFF|INFO|DETAIL, like TORCH_DISTRIBUTED_DEBUG, adds the
// reducer's diagnostics (INFO: bucket layout and unused sets when they change;
// DETAIL: the unused set every iteration, the bucket layout after a rebuild).
// Every line starts with "[ddp rank R LEVEL]" and goes to stderr.
#pragma once

#include <fmt/format.h>

#include <string>

namespace ddp::detail {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };
enum class DebugLevel { kOff = 0, kInfo = 1, kDetail = 2 };

LogLevel log_level();
DebugLevel debug_level();
// Re-reads the environment (tests change it at run time).
void reload_log_settings();

void log_line(LogLevel level, int rank, const std::string& message);

template <typename... Args>
void log(LogLevel level, int rank, fmt::format_string<Args...> format, Args&&... args) {
  if (static_cast<int>(level) <= static_cast<int>(log_level())) {
    log_line(level, rank, fmt::format(format, std::forward<Args>(args)...));
  }
}

} // namespace ddp::detail
