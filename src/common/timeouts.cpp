#include "common/timeouts.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>

#include <ddp/error.h>

namespace ddp::detail {

std::chrono::steady_clock::time_point deadline_after(std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto now = Clock::now();
  if (timeout.count() <= 0) return now;
  const auto room = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::time_point::max() - now);
  if (timeout >= room) return Clock::time_point::max();
  return now + timeout;
}

std::chrono::milliseconds parse_seconds(const char* name, const std::string& text, int rank) {
  const std::string where = rank >= 0 ? fmt::format("[ddp rank {}] ", rank) : std::string("[ddp] ");
  char* end = nullptr;
  const double seconds = std::strtod(text.c_str(), &end);
  const bool parsed = end != text.c_str() && *end == '\0';
  const double max_seconds = static_cast<double>(kNoDeadline.count()) / 1000.0;
  if (!parsed || !std::isfinite(seconds) || !(seconds > 0) || seconds > max_seconds) {
    throw InvalidArgumentError(fmt::format(
        "{}environment variable {}=\"{}\" is not a valid timeout: give a number of seconds, greater than 0 and at "
        "most {:.0f} (e.g. {}=300 or {}=0.5), with nothing after it",
        where, name, text, max_seconds, name, name));
  }
  const double ms = std::ceil(seconds * 1000.0);
  return std::chrono::milliseconds(static_cast<int64_t>(ms));
}

std::optional<std::chrono::milliseconds> seconds_from_env(const char* name, int rank) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return parse_seconds(name, value, rank);
}

} // namespace ddp::detail
