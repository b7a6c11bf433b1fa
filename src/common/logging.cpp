#include "common/logging.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string_view>

namespace ddp::detail {
namespace {

struct Settings {
  LogLevel level = LogLevel::kWarn;
  DebugLevel debug = DebugLevel::kOff;
};

Settings read_settings() {
  Settings s;
  if (const char* v = std::getenv("DDP_LOG_LEVEL")) {
    std::string_view level(v);
    if (level == "ERROR") s.level = LogLevel::kError;
    else if (level == "WARN") s.level = LogLevel::kWarn;
    else if (level == "INFO") s.level = LogLevel::kInfo;
    else if (level == "DEBUG") s.level = LogLevel::kDebug;
  }
  if (const char* v = std::getenv("DDP_DEBUG")) {
    std::string_view debug(v);
    if (debug == "INFO") s.debug = DebugLevel::kInfo;
    else if (debug == "DETAIL") s.debug = DebugLevel::kDetail;
  }
  // Asking for reducer diagnostics implies printing them.
  if (s.debug != DebugLevel::kOff && s.level < LogLevel::kInfo) s.level = LogLevel::kInfo;
  return s;
}

Settings& settings() {
  static Settings s = read_settings();
  return s;
}

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kError: return "ERROR";
    case LogLevel::kWarn: return "WARN";
    case LogLevel::kInfo: return "INFO";
    case LogLevel::kDebug: return "DEBUG";
  }
  return "?";
}

} // namespace

LogLevel log_level() { return settings().level; }
DebugLevel debug_level() { return settings().debug; }
void reload_log_settings() { settings() = read_settings(); }

void log_line(LogLevel level, int rank, const std::string& message) {
  // One fprintf per line so lines from the comm thread and the trainer do not interleave.
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  std::fprintf(stderr, "[ddp rank %d %s] %s\n", rank, level_name(level), message.c_str());
  std::fflush(stderr);
}

} // namespace ddp::detail
