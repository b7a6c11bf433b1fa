#include <ddp/work.h>

#include <fmt/format.h>

#include <ddp/error.h>

#include "common/timeouts.h"

namespace ddp {

Work::Work(std::string description, uint64_t sequence, int rank)
    : description_(std::move(description)), sequence_(sequence), rank_(rank) {}

Work::~Work() = default;

bool Work::is_completed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return completed_;
}

void Work::wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  // A negative or enormous timeout (milliseconds::max()) means "no timeout": adding
  // it to the clock would overflow and time out at once.
  if (timeout.count() < 0 || detail::is_unbounded(timeout)) {
    done_cv_.wait(lock, [this] { return completed_; });
  } else if (!done_cv_.wait_until(lock, detail::deadline_after(timeout), [this] { return completed_; })) {
    timed_out_ = true;
    throw_timeout(timeout);
  }
  if (error_) {
    std::rethrow_exception(error_);
  }
}

bool Work::timed_out() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return timed_out_ && !completed_;
}

Work::Clock::time_point Work::start_time() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return start_time_;
}

Work::Clock::time_point Work::end_time() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return end_time_;
}

void Work::mark_started() {
  std::lock_guard<std::mutex> lock(mutex_);
  start_time_ = Clock::now();
}

void Work::finish(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    end_time_ = Clock::now();
    error_ = std::move(error);
    completed_ = true;
  }
  done_cv_.notify_all();
}

bool Work::complete_if_pending(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (completed_) return false;
    end_time_ = Clock::now();
    error_ = std::move(error);
    completed_ = true;
  }
  done_cv_.notify_all();
  return true;
}

void Work::throw_timeout(std::chrono::milliseconds timeout) const {
  throw TimeoutError(fmt::format(
      "[ddp rank {}] collective #{} ({}) did not complete within {} ms. Another rank is not issuing the "
      "same collectives in the same order: it crashed, is stuck, skipped a backward(), or runs a different "
      "model or number of iterations. Check the other ranks' output; raise Options::timeout (or DDP_TIMEOUT_S) "
      "only if that rank is merely slow.",
      rank_, sequence_, description_, timeout.count()));
}

} // namespace ddp
