#include "comm/watchdog.h"

#include <fmt/format.h>

#include <algorithm>

#include <ddp/error.h>

#include "common/logging.h"
#include "common/timeouts.h"

namespace ddp::detail {

Watchdog::Watchdog(std::string group, int rank, Hooks hooks, std::chrono::milliseconds interval, bool start_thread)
    : group_(std::move(group)), rank_(rank), hooks_(std::move(hooks)), interval_(interval) {
  if (start_thread) thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Watchdog::Clock::time_point Watchdog::now() const { return hooks_.now ? hooks_.now() : Clock::now(); }

void Watchdog::track(std::shared_ptr<Work> work, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!failure_.empty()) {
    const std::string reason = failure_;
    lock.unlock();
    work->complete_if_pending(std::make_exception_ptr(CommError(fmt::format(
        "[ddp rank {}] collective #{} ({}) was not run: the {} was aborted earlier: {}", rank_, work->sequence(),
        work->description(), group_, reason))));
    return;
  }
  const bool never = timeout.count() < 0 || is_unbounded(timeout);
  const Clock::time_point deadline = never ? Clock::time_point::max() : now() + timeout;
  entries_.push_back(Entry{std::move(work), timeout, deadline});
}

void Watchdog::check_now() {
  std::vector<Entry> entries;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!failure_.empty() || entries_.empty()) return;
    entries = entries_;
  }
  // Polled without the lock: a completion query may call into the driver.
  const Clock::time_point t = now();
  std::vector<const Work*> done;
  const Entry* expired = nullptr;
  for (const Entry& e : entries) {
    if (e.work->is_completed()) {
      done.push_back(e.work.get());
    } else if (expired == nullptr && t >= e.deadline) {
      expired = &e; // the oldest expired one: collectives complete in issue order
    }
  }
  std::string async = hooks_.poll_error ? hooks_.poll_error() : std::string();
  if (expired != nullptr) {
    const Work& w = *expired->work;
    fail_all(fmt::format(
                 "[ddp rank {}] watchdog: collective #{} ({}) on the {} did not complete within {} ms of its launch. "
                 "Another rank is not issuing the same collectives in the same order: it crashed, is stuck, skipped a "
                 "backward(), or runs a different model or number of iterations. Check the other ranks' output; raise "
                 "Options::timeout (or DDP_TIMEOUT_S) only if that rank is merely slow.",
                 rank_, w.sequence(), w.description(), group_, expired->timeout.count()),
             &w);
    return;
  }
  if (!async.empty()) {
    // Name the oldest collective still in flight: it is the one the failure stopped.
    const Entry* oldest = nullptr;
    for (const Entry& e : entries) {
      if (std::find(done.begin(), done.end(), e.work.get()) == done.end()) {
        oldest = &e;
        break;
      }
    }
    fail_all(oldest != nullptr
                 ? fmt::format("[ddp rank {}] watchdog: the {} failed while collective #{} ({}) was in flight: {}",
                               rank_, group_, oldest->work->sequence(), oldest->work->description(), async)
                 : fmt::format("[ddp rank {}] watchdog: the {} failed: {}", rank_, group_, async),
             nullptr);
    return;
  }
  if (done.empty()) return;
  std::lock_guard<std::mutex> lock(mutex_);
  entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                [&](const Entry& e) {
                                  return std::find(done.begin(), done.end(), e.work.get()) != done.end();
                                }),
                 entries_.end());
}

std::exception_ptr Watchdog::error_for(const Work& work, bool timed_out) const {
  const std::string reason = failure();
  if (timed_out) return std::make_exception_ptr(TimeoutError(reason + " The communicator has been aborted so that no "
                                                                      "rank hangs on it; this process group cannot "
                                                                      "be used again."));
  return std::make_exception_ptr(CommError(fmt::format(
      "[ddp rank {}] collective #{} ({}) did not complete: the {} was aborted: {}", rank_, work.sequence(),
      work.description(), group_, reason)));
}

void Watchdog::fail_all(const std::string& reason, const Work* expired) {
  std::vector<Entry> entries;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!failure_.empty()) return;
    failure_ = reason;
    entries.swap(entries_);
  }
  log(LogLevel::kError, rank_, "{}", reason);
  // Abort first: it ends the kernels that wait on peers, so the streams drain and the
  // threads blocked on them return; then every waiter gets the reason, whatever the abort
  // did.
  if (hooks_.abort) {
    try {
      hooks_.abort(reason);
    } catch (const std::exception& e) {
      log(LogLevel::kError, rank_, "watchdog of the {}: the abort failed: {}", group_, e.what());
    }
  }
  for (const Entry& e : entries) e.work->complete_if_pending(error_for(*e.work, e.work.get() == expired));
}

bool Watchdog::failed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return !failure_.empty();
}

std::string Watchdog::failure() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failure_;
}

size_t Watchdog::in_flight() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.size();
}

void Watchdog::run() {
  if (hooks_.on_thread_start) {
    try {
      hooks_.on_thread_start();
    } catch (const std::exception& e) {
      log(LogLevel::kError, rank_, "watchdog of the {}: could not start: {}", group_, e.what());
    }
  }
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, interval_, [this] { return stop_; });
    if (stop_) break;
    lock.unlock();
    try {
      check_now();
    } catch (const std::exception& e) {
      // A failing poll (a driver error) must not kill the process from this thread.
      log(LogLevel::kError, rank_, "watchdog of the {}: a check failed: {}", group_, e.what());
    }
    lock.lock();
  }
}

} // namespace ddp::detail
