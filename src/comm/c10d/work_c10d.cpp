#include "comm/c10d/work_c10d.h"

#include <fmt/format.h>

#include <ddp/error.h>

#include "common/timeouts.h"

namespace ddp::c10d_adapter {
namespace {

// c10d's "no timeout" is zero; libddp's is negative or unbounded.
std::chrono::milliseconds to_c10d(std::chrono::milliseconds timeout) {
  return timeout.count() < 0 || detail::is_unbounded(timeout) ? std::chrono::milliseconds(0) : timeout;
}

} // namespace

WorkC10d::WorkC10d(c10::intrusive_ptr<c10d::Work> work, std::string description, uint64_t sequence, int rank,
                   std::string backend, bool on_cuda, std::weak_ptr<Work> previous)
    : Work(std::move(description), sequence, rank), work_(std::move(work)), backend_(std::move(backend)),
      on_cuda_(on_cuda), previous_(std::move(previous)) {}

std::shared_ptr<WorkC10d> WorkC10d::start(c10::intrusive_ptr<c10d::Work> work, std::string description,
                                          uint64_t sequence, int rank, std::string backend, bool on_cuda,
                                          std::weak_ptr<Work> previous) {
  std::shared_ptr<WorkC10d> self(new WorkC10d(std::move(work), std::move(description), sequence, rank,
                                              std::move(backend), on_cuda, std::move(previous)));
  self->mark_started();
  c10::intrusive_ptr<c10::ivalue::Future> future;
  try {
    future = self->work_->getFuture();
  } catch (const std::exception&) {
    // A backend whose works have no future: wait() completes this one from the work.
    self->has_future_ = false;
    return self;
  }
  // A weak reference: the future holds its callback until it completes, and a work that
  // nobody waits for any more need not be kept alive by it.
  std::weak_ptr<WorkC10d> weak = self;
  future->addCallback([weak](c10::ivalue::Future& done) {
    auto work = weak.lock();
    if (!work) return;
    if (done.hasError()) {
      work->finish(std::make_exception_ptr(CommError(work->failure(done.tryRetrieveErrorMessage()))));
    } else {
      work->finish();
    }
  });
  return self;
}

std::string WorkC10d::failure(const std::string& what) const {
  return fmt::format("[ddp rank {}] collective #{} ({}) failed in the c10d {} process group: {}", rank_, sequence_,
                     description_, backend_, what);
}

bool WorkC10d::is_completed() const {
  if (!Work::is_completed()) return false;
  const auto previous = previous_.lock();
  return !previous || previous->is_completed();
}

void WorkC10d::wait(std::chrono::milliseconds timeout) {
  if (const auto previous = previous_.lock()) {
    // Its own error is its waiter's to see; here only its completion counts.
    try {
      previous->wait(timeout);
    } catch (const TimeoutError&) {
      throw_timeout(timeout);
    } catch (const std::exception&) {
    }
  }
  if (!has_future_ && !is_completed()) {
    try {
      work_->wait(to_c10d(timeout));
      finish();
    } catch (const std::exception& e) {
      if (!work_->isCompleted()) {
        {
          std::lock_guard<std::mutex> lock(mutex_);
          timed_out_ = true;
        }
        throw_timeout(timeout);
      }
      finish(std::make_exception_ptr(CommError(failure(e.what()))));
    }
  }
  Work::wait(timeout);
  if (on_cuda_) {
    // Orders the caller's current stream after the collective (c10d's stream wait); the
    // host does not block.
    try {
      work_->wait(to_c10d(timeout));
    } catch (const std::exception& e) {
      throw CommError(failure(e.what()));
    }
  }
}

} // namespace ddp::c10d_adapter
