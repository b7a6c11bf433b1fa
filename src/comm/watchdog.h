// Watchdog: one thread per process group that owns the deadlines of its collectives.
// A backend whose waits do not block the host (NCCL: the consumer's stream waits on the
// collective's end event) cannot time out inside wait(); without a watchdog, a dead or
// out-of-step peer leaves the GPU spinning in a collective, the host stuck in its next
// synchronisation, and nothing that ever says why. The watchdog
//   - tracks every launched Work with a deadline counted from its launch;
//   - polls, every `interval`, each work's completion and the group's asynchronous error
//     (ncclCommGetAsyncError for NCCL);
//   - at the first expired deadline or asynchronous error, aborts the group once (for
//     NCCL, ncclCommAbort, which also ends the kernels waiting on peers), then fails
//     every tracked work: the one that expired with TimeoutError, the others with
//     CommError, each message naming the collective, its sequence number, the timeout
//     and the cause. The group's next call then throws the same reason (the backend
//     checks failed()).
// Backend-independent (it knows Work and two callbacks), so its logic is unit-tested on
// the CPU with fake works and a fake clock (tests/unit/watchdog_test.cpp).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <ddp/work.h>

namespace ddp::detail {

class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;

  struct Hooks {
    // The group's asynchronous failure, as a sentence naming the library's error, or an
    // empty string while healthy. Called from the watchdog thread; may be empty.
    std::function<std::string()> poll_error;
    // Aborts the group's communicator with `reason`. Called once, from whichever thread
    // found the failure (the watchdog thread, or a test calling check_now()).
    std::function<void(const std::string& reason)> abort;
    // The clock; tests replace it. Empty: steady_clock::now.
    std::function<Clock::time_point()> now;
    // Runs first on the watchdog thread (NCCL: make the group's device current, so that
    // the thread's CUDA calls do not create a context on device 0). May be empty.
    std::function<void()> on_thread_start;
  };

  // `group` names the process group in messages (e.g. "NCCL process group on cuda:0").
  // `start_thread`: false for tests, which drive the checks with check_now().
  Watchdog(std::string group, int rank, Hooks hooks, std::chrono::milliseconds interval, bool start_thread = true);
  // Stops the thread; works still tracked are left as they are.
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Watches `work` until it completes; it times out `timeout` after now (a negative or
  // unbounded timeout: never). Once the group failed, fails `work` at once instead.
  void track(std::shared_ptr<Work> work, std::chrono::milliseconds timeout);

  // One round of the checks the thread runs every interval.
  void check_now();

  // Whether the watchdog aborted the group, and why (the first reason, empty before).
  bool failed() const;
  std::string failure() const;
  // How many works it still tracks.
  size_t in_flight() const;

 private:
  struct Entry {
    std::shared_ptr<Work> work;
    std::chrono::milliseconds timeout;
    Clock::time_point deadline;
  };

  void run();
  Clock::time_point now() const;
  // Aborts the group once with `reason` and fails every tracked work; `expired` (may be
  // null) gets a TimeoutError, the others a CommError. Caller holds no lock.
  void fail_all(const std::string& reason, const Work* expired);
  std::exception_ptr error_for(const Work& work, bool timed_out) const;

  const std::string group_;
  const int rank_;
  const Hooks hooks_;
  const std::chrono::milliseconds interval_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<Entry> entries_;
  std::string failure_;
  bool stop_ = false;
  std::thread thread_;
};

} // namespace ddp::detail
