// A handle on one asynchronous collective. Backends complete it; the reducer and
// users wait on it. Collectives of one process group complete in issue order.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>

namespace ddp {

class Work {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kNoTimeout{-1};

  Work(std::string description, uint64_t sequence, int rank);
  virtual ~Work();
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;

  // True once the collective has finished (successfully or not).
  virtual bool is_completed() const;
  // Blocks until the collective finishes; rethrows its error. With a timeout, throws
  // ddp::TimeoutError naming the collective and the rank when it expires.
  virtual void wait(std::chrono::milliseconds timeout = kNoTimeout);

  // True while the collective has not completed although a wait() on it already timed
  // out: its peers are gone or out of step, so it may never complete.
  bool timed_out() const;

  // What the collective is, e.g. "allreduce of 4194304 x Float (16.0 MiB)".
  const std::string& description() const { return description_; }
  // Position of this collective in its process group's issue order (from 1).
  uint64_t sequence() const { return sequence_; }
  // When the backend started and finished running it (for the timeline).
  Clock::time_point start_time() const;
  Clock::time_point end_time() const;

  // Called by the backend that runs the collective.
  void mark_started();
  void finish(std::exception_ptr error = nullptr);
  // Completes the work with `error` unless it already completed; true if it did. For
  // whoever gives up on the collective on its behalf (the NCCL backend's watchdog).
  bool complete_if_pending(std::exception_ptr error);

 protected:
  [[noreturn]] void throw_timeout(std::chrono::milliseconds timeout) const;

  const std::string description_;
  const uint64_t sequence_;
  const int rank_;
  mutable std::mutex mutex_;
  std::condition_variable done_cv_;
  bool completed_ = false;
  bool timed_out_ = false;
  std::exception_ptr error_;
  Clock::time_point start_time_{};
  Clock::time_point end_time_{};
};

} // namespace ddp
