// Runs a test body on N ranks as threads of this process, each with its ThreadProcessGroup
// (tests/support/thread_process_group.h), and hands every rank's outcome back to the
// calling thread: Catch2 2.x assertions are not thread-safe, so a rank records what it saw
// and the test asserts on the main thread after run_ranks returns.
//
//   auto results = ddp::test::run_ranks(3, [](int rank, std::shared_ptr<ddp::ProcessGroup> pg) {
//     ...;                       // no CHECK/REQUIRE in here
//     return message;            // any copyable value, or nothing
//   });
//   for (auto& r : results) { CAPTURE(r.rank, r.error); CHECK(r.value == ...); }
//
// Each rank's thread sees its own group as ddp::test::world() (world.h), so helpers such
// as identical_across_ranks() work inside the body. A rank's group is destroyed when its
// body returns (like a process that exits). A run that has not ended within
// RunOptions::timeout aborts every rank's group (waits on Works then fail with a
// CommError naming the runner); if a rank still has not returned after the grace period,
// the runner prints which ranks hang and ends the process (exit 124), so a hung rank
// fails the test binary instead of hanging ctest.
#pragma once

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <ddp/process_group.h>

#include "thread_process_group.h"

namespace ddp::test {

struct RunOptions {
  // The whole run: every rank must have returned by then.
  std::chrono::milliseconds timeout = std::chrono::seconds(120);
  // After the abort, how long the ranks get to return before the process ends.
  std::chrono::milliseconds grace = std::chrono::seconds(20);
};

// What one rank's body did.
struct RankOutcome {
  int rank = 0;
  std::string error;      // what() of the exception that left the body; empty if none
  std::string error_type; // its type, demangled ("ddp::ReductionError"); empty if none
  std::exception_ptr exception;
  bool ok() const { return !exception; }
};

template <class T>
struct RankResult : RankOutcome {
  std::optional<T> value; // set when the body returned normally
};

using RankBody = std::function<void(int rank, std::shared_ptr<ProcessGroup> pg)>;

// The type-erased runner: `world` supplies the groups (with any faults injected).
std::vector<RankOutcome> run_ranks_in(const std::shared_ptr<ThreadWorld>& world, const RankBody& body,
                                      const RunOptions& options = {});

// One line per rank that threw: "rank 1: ddp::CommError: ..." (empty when none did).
std::string describe_errors(const std::vector<RankOutcome>& outcomes);

// Runs `body(rank, pg)` on every rank of `world`; returns each rank's outcome and, unless
// the body returns void, its value.
template <class Body>
auto run_ranks(const std::shared_ptr<ThreadWorld>& world, Body body, const RunOptions& options = {}) {
  using T = std::invoke_result_t<Body&, int, std::shared_ptr<ProcessGroup>>;
  if constexpr (std::is_void_v<T>) {
    return run_ranks_in(world, RankBody(std::move(body)), options);
  } else {
    std::vector<std::optional<T>> values(static_cast<size_t>(world->size()));
    auto outcomes = run_ranks_in(
        world,
        [&](int rank, std::shared_ptr<ProcessGroup> pg) { values[static_cast<size_t>(rank)] = body(rank, std::move(pg)); },
        options);
    std::vector<RankResult<T>> results(outcomes.size());
    for (size_t r = 0; r < outcomes.size(); ++r) {
      static_cast<RankOutcome&>(results[r]) = std::move(outcomes[r]);
      results[r].value = std::move(values[r]);
    }
    return results;
  }
}

template <class Body>
auto run_ranks(int world_size, Body body, const RunOptions& options = {}) {
  return run_ranks(ThreadWorld::create(world_size), std::move(body), options);
}

} // namespace ddp::test
