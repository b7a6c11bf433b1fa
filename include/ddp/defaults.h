// Defaults that more than one public type shares, written once. The environment
// (docs/configuration.md) may replace them; a value set in code wins where the
// option's comment says so.
#pragma once

#include <chrono>

namespace ddp {

// How long a collective, a blocking helper or a rendezvous may take before
// ddp::TimeoutError: Options::timeout, ProcessGroup::timeout() and the rendezvous all
// start from this. DDP_TIMEOUT_S replaces it.
inline constexpr std::chrono::milliseconds kDefaultTimeout = std::chrono::minutes(10);

} // namespace ddp
