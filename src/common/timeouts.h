// Timeouts without overflow. A timeout is a std::chrono::milliseconds that users may
// set to anything up to milliseconds::max() ("never"); adding it to a clock reading
// would overflow and time out at once, so every deadline goes through these helpers.
// Environment values (DDP_TIMEOUT_S, DDP_EXIT_TIMEOUT_S) are read by common/env.h.
#pragma once

#include <chrono>
#include <optional>

namespace ddp::detail {

// Longer than this counts as "no timeout" (about 31 years): waits become untimed.
constexpr std::chrono::milliseconds kNoDeadline{std::chrono::hours(24) * 365 * 31};

// True when `timeout` is so long that a wait should simply not time out.
inline bool is_unbounded(std::chrono::milliseconds timeout) { return timeout >= kNoDeadline; }

// now + timeout, saturated at time_point::max().
std::chrono::steady_clock::time_point deadline_after(std::chrono::milliseconds timeout);

} // namespace ddp::detail
