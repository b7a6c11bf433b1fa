#include "common/logging.h"

#include <atomic>
#include <cstdio>
#include <mutex>

#include <ddp/error.h>

#include "common/env.h"

namespace ddp::detail {
namespace {

// Atomics: the communication threads log while a group's creation reloads them.
std::atomic<int> g_level{-1};
std::atomic<int> g_debug{-1};

void install(const LogSettings& s) {
  g_debug.store(static_cast<int>(s.debug));
  g_level.store(static_cast<int>(s.level));
}

// The first read, from wherever the first log line comes: it must not throw, so a bad
// value means the defaults until reload_log_settings() reports it.
void ensure_loaded() {
  if (g_level.load() >= 0) return;
  try {
    install(Env().log_settings());
  } catch (const InvalidArgumentError&) {
    install(LogSettings{});
  }
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

LogLevel log_level() {
  ensure_loaded();
  return static_cast<LogLevel>(g_level.load());
}
DebugLevel debug_level() {
  ensure_loaded();
  return static_cast<DebugLevel>(g_debug.load());
}
void reload_log_settings(int rank) { install(Env(rank).log_settings()); }

void log_line(LogLevel level, int rank, const std::string& message) {
  // One fprintf per line so lines from the comm thread and the trainer do not interleave.
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  std::fprintf(stderr, "[ddp rank %d %s] %s\n", rank, level_name(level), message.c_str());
  std::fflush(stderr);
}

} // namespace ddp::detail
