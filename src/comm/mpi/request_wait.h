// Waiting for a nonblocking MPI operation without holding a core.
//
// A blocking MPI call (MPI_Allreduce, MPI_Wait) polls Open MPI's progress engine until it
// completes: the communication thread then takes a whole core for the collective's
// length, even while the bytes sit in the kernel's socket buffers waiting for the link.
// Overlapped with backward, that core is taken from the compute threads. Over TCP the
// kernel moves the data between two progress calls, so polling less often costs little
// bandwidth as long as the sleep is short against what the socket buffers hold
// (100 us is 12 KB at 1 Gbit/s, 125 KB at 10 Gbit/s; Linux's buffers grow to MiBs).
#pragma once

#include <mpi.h>

#include <chrono>
#include <string>

#include "common/env.h"

namespace ddp::mpi {

// kSpin: blocking MPI collectives: lowest latency; hold a core until completion.
// kSleep: nonblocking operations tested in a loop: spinning for a few microseconds,
// then sleeping between tests; large all-reduces go through RingAllreduce.
// (The enum is common/env.h's, which reads DDP_MPI_WAIT.)
using WaitMode = detail::MpiWait;

struct WaitPolicy {
  WaitMode mode = WaitMode::kSpin;
  std::chrono::microseconds spin{50};      // test without sleeping for this long first
  std::chrono::microseconds max_sleep{100}; // the sleep doubles from 1 us up to this

  // DDP_MPI_WAIT=spin|sleep (default spin) and DDP_MPI_WAIT_SLEEP_US (the longest sleep
  // between tests), read by detail::Env. Spin stays the default: on the simulated cluster sleeping cut the
  // ranks' system CPU time by three quarters but did not shorten the step, because there
  // the communication's own work then competes with backward for the same cores
  // (docs/performance.md, "Sleeping between progress calls"). An unknown value is an
  // InvalidArgumentError naming the variable.
  static WaitPolicy from_env(int rank);
  std::string describe() const;
};

// Completes `request` (MPI_Wait semantics; a failed operation throws CommError).
void wait_request(MPI_Request& request, const WaitPolicy& policy);
// Completes all `count` requests (MPI_Waitall semantics).
void wait_all(MPI_Request* requests, int count, const WaitPolicy& policy);

} // namespace ddp::mpi
