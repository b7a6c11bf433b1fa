// The watchdog's logic, driven by fake works and a fake clock: what a NCCL process group
// relies on to turn a dead peer into an error on every thread instead of a hang. The
// NCCL side (ncclCommGetAsyncError, ncclCommAbort) is the two callbacks; the gpu tests
// exercise those on a GPU.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <ddp/error.h>
#include <ddp/work.h>

#include "comm/watchdog.h"

using Catch::Contains;
using std::chrono::milliseconds;

namespace {

// A collective the test completes by hand, like a GPU event that fires.
class FakeWork : public ddp::Work {
 public:
  FakeWork(std::string what, uint64_t sequence) : Work(std::move(what), sequence, 1) {}
  void fire() { finish(); }
};

struct Harness {
  ddp::detail::Watchdog::Clock::time_point t = ddp::detail::Watchdog::Clock::now();
  std::vector<std::string> aborts;
  std::string async_error;
  std::unique_ptr<ddp::detail::Watchdog> watchdog;

  Harness() {
    ddp::detail::Watchdog::Hooks hooks;
    hooks.poll_error = [this] { return async_error; };
    hooks.abort = [this](const std::string& reason) { aborts.push_back(reason); };
    hooks.now = [this] { return t; };
    watchdog = std::make_unique<ddp::detail::Watchdog>("NCCL process group on cuda:0", 1, hooks, milliseconds(10),
                                                       /*start_thread=*/false);
  }
  std::shared_ptr<FakeWork> launch(const std::string& what, uint64_t sequence, milliseconds timeout) {
    auto w = std::make_shared<FakeWork>(what, sequence);
    watchdog->track(w, timeout);
    return w;
  }
};

} // namespace

TEST_CASE("the watchdog forgets completed collectives and aborts nothing while all is well", "[watchdog]") {
  Harness h;
  auto a = h.launch("allreduce of bucket 0", 1, milliseconds(1000));
  auto b = h.launch("allreduce of bucket 1", 2, milliseconds(1000));
  h.t += milliseconds(500);
  h.watchdog->check_now();
  CHECK(h.watchdog->in_flight() == 2);
  a->fire();
  h.watchdog->check_now();
  CHECK(h.watchdog->in_flight() == 1);
  b->fire();
  h.t += milliseconds(5000); // past both deadlines, but both completed: no timeout
  h.watchdog->check_now();
  CHECK(h.watchdog->in_flight() == 0);
  CHECK_FALSE(h.watchdog->failed());
  CHECK(h.aborts.empty());
}

TEST_CASE("an expired deadline aborts the group once and fails every waiter, naming the collective", "[watchdog]") {
  Harness h;
  auto first = h.launch("allreduce of bucket 0", 7, milliseconds(1000));
  h.t += milliseconds(400);
  auto second = h.launch("allgather of the used flags", 8, milliseconds(1000));
  h.t += milliseconds(700); // first is 1100 ms old, second 700 ms
  h.watchdog->check_now();

  REQUIRE(h.aborts.size() == 1);
  CHECK_THAT(h.aborts[0], Contains("[ddp rank 1]") && Contains("collective #7") &&
                              Contains("allreduce of bucket 0") && Contains("1000 ms") &&
                              Contains("NCCL process group on cuda:0") && Contains("DDP_TIMEOUT_S"));
  CHECK(h.watchdog->failed());
  CHECK(h.watchdog->failure() == h.aborts[0]);
  CHECK(h.watchdog->in_flight() == 0);
  // The expired collective's waiter gets TimeoutError; the one queued behind it CommError
  // that names itself and the reason.
  REQUIRE(first->is_completed());
  CHECK_THROWS_AS(first->wait(), ddp::TimeoutError);
  CHECK_THROWS_WITH(first->wait(), Contains("collective #7") && Contains("cannot be used again"));
  REQUIRE(second->is_completed());
  try {
    second->wait();
    FAIL("the second collective's wait did not throw");
  } catch (const ddp::TimeoutError&) {
    FAIL("only the expired collective is a timeout");
  } catch (const ddp::CommError& e) {
    CHECK_THAT(e.what(), Contains("collective #8") && Contains("allgather of the used flags") &&
                             Contains("was aborted") && Contains("collective #7"));
  }
  // Later checks do not abort again; a collective launched afterwards fails at once.
  h.t += milliseconds(5000);
  h.watchdog->check_now();
  auto late = h.launch("broadcast of the buffers", 9, milliseconds(1000));
  CHECK(h.aborts.size() == 1);
  REQUIRE(late->is_completed());
  CHECK_THROWS_WITH(late->wait(), Contains("collective #9") && Contains("was not run") && Contains("collective #7"));
}

TEST_CASE("an asynchronous communicator error aborts at once and names the collective in flight", "[watchdog]") {
  Harness h;
  auto done = h.launch("allreduce of bucket 0", 3, milliseconds(60000));
  done->fire();
  auto stuck = h.launch("allreduce of bucket 1", 4, milliseconds(60000));
  h.watchdog->check_now();
  CHECK(h.aborts.empty());
  h.async_error = "NCCL reports ncclRemoteError (a peer failed)";
  h.t += milliseconds(10); // long before the deadline
  h.watchdog->check_now();
  REQUIRE(h.aborts.size() == 1);
  CHECK_THAT(h.aborts[0], Contains("collective #4") && Contains("allreduce of bucket 1") && Contains("ncclRemoteError"));
  CHECK_THROWS_AS(stuck->wait(), ddp::CommError);
  CHECK_THROWS_WITH(stuck->wait(), Contains("ncclRemoteError"));
  done->wait(); // completed before the failure: no error
}

TEST_CASE("an unbounded timeout never expires", "[watchdog]") {
  Harness h;
  auto forever = h.launch("allreduce of bucket 0", 1, milliseconds::max());
  auto negative = h.launch("allreduce of bucket 1", 2, milliseconds(-1));
  h.t += std::chrono::hours(24 * 365);
  h.watchdog->check_now();
  CHECK_FALSE(h.watchdog->failed());
  CHECK(h.watchdog->in_flight() == 2);
  CHECK_FALSE(forever->is_completed());
  CHECK_FALSE(negative->is_completed());
}

TEST_CASE("the watchdog's own thread enforces a deadline without anyone waiting on the host", "[watchdog]") {
  std::atomic<int> aborts{0};
  ddp::detail::Watchdog::Hooks hooks;
  hooks.abort = [&](const std::string&) { aborts += 1; };
  ddp::detail::Watchdog watchdog("test group", 0, hooks, milliseconds(5));
  auto w = std::make_shared<FakeWork>("allreduce of bucket 0", 1);
  watchdog.track(w, milliseconds(20));
  // The untimed wait returns only because the watchdog failed the work (no GPU event
  // will ever fire); a broken watchdog hangs here and the ctest timeout reports it.
  CHECK_THROWS_AS(w->wait(), ddp::TimeoutError);
  CHECK(aborts.load() == 1);
  CHECK(watchdog.failed());
}
