#include "reducer/interrupted_backward.h"

#include <fmt/format.h>

#include <exception>
#include <memory>
#include <vector>

#include <ddp/error.h>

namespace ddp::detail {

InterruptedBackward::InterruptedBackward(Parts parts, int rank, int world_size, std::chrono::milliseconds timeout)
    : parts_(parts), rank_(rank), world_size_(world_size), timeout_(timeout) {}

void InterruptedBackward::complete_section(const std::function<bool(size_t)>& launch, int64_t iteration,
                                           std::unique_lock<std::mutex>* lock) {
  parts_.buckets.launch_rest(launch);
  std::shared_ptr<Work>& flags_work = parts_.status.work();
  // A hook's continuations issue collectives before the status exchange, in finalize's
  // order; a collective that does not complete (CommError, TimeoutError) ends it here,
  // before any status is sent into a group out of step.
  if (parts_.hooks.active() && !flags_work) {
    if (lock) lock->unlock();
    std::exception_ptr failure;
    try {
      std::vector<HookRunner::Failure> logged_only;
      parts_.hooks.complete(parts_.buckets, /*interrupted=*/true, logged_only);
    } catch (...) {
      failure = std::current_exception();
    }
    if (lock) lock->lock();
    if (failure) std::rethrow_exception(failure);
  }
  if (flags_work) return;
  if (parts_.step_check.deferred()) {
    at::Tensor row = parts_.status.make_row(/*used=*/0, StatusRow::kAbandoned);
    flags_work = parts_.step_check.gather_deferred(StepCheck::PendingRead::Kind::kFlags,
                                                   parts_.step_check.to_comm_device(row), iteration);
  } else {
    parts_.status.issue_abandoned();
  }
  parts_.stats.collectives += 1;
}

void InterruptedBackward::settle(const std::function<bool(size_t)>& launch, int64_t iteration,
                                 std::unique_lock<std::mutex>& lock, const std::function<void()>& end_iteration,
                                 const std::function<void()>& after_waits) {
  StepCheck& check = parts_.step_check;
  const int64_t step = check.step();
  const std::string cause = cause_.empty() ? "an exception was raised during backward" : cause_;
  std::vector<std::shared_ptr<Work>> pending;
  std::exception_ptr failure;
  try {
    if (world_size_ > 1) {
      if (!check.verified()) {
        check.throw_if_broken();
        if (!check.issued()) {
          // Its header was never issued (issuing it failed): the peers may have issued
          // theirs, so the section cannot be completed alike on every rank.
          check.mark_broken(fmt::format("[ddp rank {}] the backward of training step {} was interrupted before its "
                                        "section header could be issued ({}); the ranks are out of step: restart from "
                                        "the last checkpoint.",
                                        rank_, step, cause));
          check.throw_if_broken();
        }
        check.verify(); // a late peer may have arrived since; throws (broken) if out of step
      }
      complete_section(launch, iteration, &lock);
      for (size_t b = 0; b < parts_.buckets.size(); ++b) {
        if (auto& work = parts_.buckets.bucket(b).work()) pending.push_back(work);
      }
      pending.push_back(parts_.status.work());
    }
  } catch (...) {
    failure = std::current_exception();
  }
  // The wait on the network: without the lock.
  lock.unlock();
  for (auto& w : pending) {
    if (failure) break;
    try {
      w->wait(timeout_);
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (!failure && world_size_ > 1 && after_waits) {
    try {
      after_waits();
    } catch (...) {
      failure = std::current_exception();
    }
  }
  lock.lock();
  end_iteration();
  // Deferred: the "abandoned" status reaches the other ranks after they wrote this step's
  // gradients, so no rank can go on; reading it here stops this rank the same way.
  if (!failure && check.deferred()) {
    try {
      check.drain(/*block=*/true);
    } catch (const ReductionError&) {
      throw;
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (failure) {
    if (!check.broken()) {
      try {
        std::rethrow_exception(failure);
      } catch (const std::exception& e) {
        check.mark_broken(fmt::format("[ddp rank {}] the backward of training step {} was interrupted ({}) and could "
                                      "not be completed on every rank: {}. The ranks are out of step; restart from "
                                      "the last checkpoint.",
                                      rank_, step, cause, e.what()));
      }
    }
    check.throw_if_broken();
  }
  throw ReductionError(fmt::format(
      "[ddp rank {}] the backward of training step {} did not finish ({}), so its gradients were not averaged on any "
      "rank. The reducer has completed that step's collectives with the other ranks and is ready: zero the gradients "
      "and go on with the next batch.",
      rank_, step, cause));
}

} // namespace ddp::detail
