#include "comm/mpi/request_wait.h"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "comm/mpi/mpi_check.h"

namespace ddp::mpi {

WaitPolicy WaitPolicy::from_env(int rank) {
  const detail::Env env(rank);
  WaitPolicy policy;
  policy.mode = env.mpi_wait();
  if (const auto sleep = env.mpi_wait_sleep()) policy.max_sleep = *sleep;
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
