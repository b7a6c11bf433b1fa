// ScopedTimer: adds the time from its construction to its destruction to a nanosecond
// counter of ReducerStats, however the scope is left (an exception included).
#pragma once

#include <chrono>
#include <cstdint>

namespace ddp::detail {

class ScopedTimer {
 public:
  explicit ScopedTimer(int64_t& total_ns) : total_ns_(total_ns), start_(std::chrono::steady_clock::now()) {}
  ~ScopedTimer() {
    total_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count();
  }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  int64_t& total_ns_;
  const std::chrono::steady_clock::time_point start_;
};

// Nanoseconds from `start` to now, for the counters a scope cannot bracket.
inline int64_t nanoseconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
}

} // namespace ddp::detail
