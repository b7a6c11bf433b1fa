// The library's logger. DDP_LOG_LEVEL=ERROR|WARN|INFO|DEBUG chooses what is printed
// (default WARN); DDP_DEBUG=OFF|INFO|DETAIL (TORCH_DISTRIBUTED_DEBUG is read when
// DDP_DEBUG is unset) adds the reducer's diagnostics: INFO, rank 0 logs the bucket layout
// at construction and after the rebuild; DETAIL, also every rank's unused sets every
// iteration. The unused sets are logged at WARN whenever they change, at any level.
// Every line starts with "[ddp rank R LEVEL]" and goes to stderr.
#pragma once

#include <fmt/format.h>

#include <string>

namespace ddp::detail {

enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };
enum class DebugLevel { kOff = 0, kInfo = 1, kDetail = 2 };

LogLevel log_level();
DebugLevel debug_level();
// Re-reads DDP_LOG_LEVEL and DDP_DEBUG (common/env.h). Throws InvalidArgumentError,
// naming the variable and `rank`, on a value that is not a level, and then keeps the
// settings it had. init_process_group calls it once the rank is known, so a bad value
// fails there; until then (and if nothing calls it) a bad value logs at the defaults.
void reload_log_settings(int rank = -1);

void log_line(LogLevel level, int rank, const std::string& message);

template <typename... Args>
void log(LogLevel level, int rank, fmt::format_string<Args...> format, Args&&... args) {
  if (static_cast<int>(level) <= static_cast<int>(log_level())) {
    log_line(level, rank, fmt::format(format, std::forward<Args>(args)...));
  }
}

} // namespace ddp::detail
