#include "comm/mpi/request_wait.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <thread>

#include <ddp/error.h>

#include "comm/mpi/mpi_check.h"

namespace ddp::mpi {

WaitPolicy WaitPolicy::from_env(int rank) {
  WaitPolicy policy;
  if (const char* mode = std::getenv("DDP_MPI_WAIT"); mode != nullptr && *mode != '\0') {
    const std::string value = mode;
    if (value == "spin") {
      policy.mode = WaitMode::kSpin;
    } else if (value == "sleep") {
      policy.mode = WaitMode::kSleep;
    } else {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] DDP_MPI_WAIT=\"{}\": expected spin (the default: blocking MPI calls, which poll until the "
          "collective ends) or sleep (test, then sleep between tests), the same on every rank.",
          rank, value));
    }
  }
  if (const char* us = std::getenv("DDP_MPI_WAIT_SLEEP_US"); us != nullptr && *us != '\0') {
    char* end = nullptr;
    errno = 0;
    const long value = std::strtol(us, &end, 10);
    if (errno != 0 || end == us || *end != '\0' || value < 1 || value > 100000) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] DDP_MPI_WAIT_SLEEP_US=\"{}\": expected a whole number of microseconds from 1 to 100000 "
          "(the longest sleep between two progress calls; default {})",
          rank, us, policy.max_sleep.count()));
    }
    policy.max_sleep = std::chrono::microseconds(value);
  }
  return policy;
}

std::string WaitPolicy::describe() const {
  if (mode == WaitMode::kSpin) return "spin (blocking MPI calls)";
  return fmt::format("sleep (MPI_Test; spins {} us, then sleeps up to {} us between tests)", spin.count(),
                     max_sleep.count());
}

void wait_request(MPI_Request& request, const WaitPolicy& policy) { wait_all(&request, 1, policy); }

void wait_all(MPI_Request* requests, int count, const WaitPolicy& policy) {
  if (policy.mode == WaitMode::kSpin) {
    DDP_CHECK_MPI(MPI_Waitall(count, requests, MPI_STATUSES_IGNORE));
    return;
  }
  const auto spin_until = std::chrono::steady_clock::now() + policy.spin;
  std::chrono::microseconds sleep{1};
  for (;;) {
    int done = 0;
    DDP_CHECK_MPI(MPI_Testall(count, requests, &done, MPI_STATUSES_IGNORE));
    if (done) return;
    if (std::chrono::steady_clock::now() < spin_until) continue;
    std::this_thread::sleep_for(sleep);
    sleep = std::min(sleep * 2, policy.max_sleep);
  }
}

} // namespace ddp::mpi
