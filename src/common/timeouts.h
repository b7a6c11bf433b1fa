// Timeouts without overflow. A timeout is a std::chrono::milliseconds that users may
// set to anything up to milliseconds::max() ("never"); adding it to a clock reading
// would overflow and time out at once, so every deadline goes through these helpers.
// Environment values (DDP_TIMEOUT_S, DDP_EXIT_TIMEOUT_S) are parsed strictly: a typo
// is an error naming the variable, never a silent "5 seconds" or "never".
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace ddp::detail {

// Longer than this counts as "no timeout" (about 31 years): waits become untimed.
constexpr std::chrono::milliseconds kNoDeadline{std::chrono::hours(24) * 365 * 31};

// True when `timeout` is so long that a wait should simply not time out.
inline bool is_unbounded(std::chrono::milliseconds timeout) { return timeout >= kNoDeadline; }

// now + timeout, saturated at time_point::max().
std::chrono::steady_clock::time_point deadline_after(std::chrono::milliseconds timeout);

// Parses a number of seconds from environment variable `name` (value `text`): a finite
// decimal number > 0 and at most kNoDeadline, nothing after it. Rounds up to whole
// milliseconds (0.0001 s is 1 ms, not 0). Throws InvalidArgumentError naming the
// variable, its value and what is accepted.
std::chrono::milliseconds parse_seconds(const char* name, const std::string& text, int rank);

// The variable's value parsed as above, or nullopt when it is unset or empty.
std::optional<std::chrono::milliseconds> seconds_from_env(const char* name, int rank);

} // namespace ddp::detail
