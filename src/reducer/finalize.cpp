// Reducer::Impl::finalize: the end of a synchronised backward, queued on the autograd
// engine by the first hook. It runs as a short sequence of named steps:
//   sweep            parameters that got no gradient contribute zeros; every bucket launched
//   checks           a lost gradient (a changed module), a changed static graph
//   flags            the used flags and this rank's status, to every rank
//   wait             (lock released) the hook's futures, the buckets, the flags
//   sparse           (lock released) the sparse gradients, gathered and summed
//   read             how many ranks used each parameter, and every rank's status
//   write back       the averages into .grad, where some rank used the parameter
//   learn            iteration 0: static graph, and rank 0's ready order for the rebuild
//   report           the parameters no rank (or not every rank) used
//   end              a new iteration; this step's error, if any, on every rank
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

#include <ddp/error.h>

#include "common/check.h"
#include "reducer/reducer_impl.h"
#include "reducer/scoped_timer.h"

namespace ddp {

using detail::StatusRow;
using detail::StepCheck;

void Reducer::Impl::finalize() {
  const auto start = Clock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  // A stale callback of an abandoned backward, or a section whose header failed (the
  // error is already on its way out of backward()).
  if (phase_ != Phase::kBackward || (!step_check_.verified() && !step_check_.issued())) return;
  verify_reduction_header();
  const int64_t iteration = iteration_;
  sweep_unmarked();
  check_lost_gradients();
  // This backward's use becomes the reported one; the marks start over.
  std::vector<char>& local_used = unused_.local_used();
  local_used.swap(marks_.local_used);
  std::fill(marks_.local_used.begin(), marks_.local_used.end(), 0);
  check_static_graph(local_used, iteration);
  bool read_later = can_read_later(local_used, iteration);
  // Every section ends with the used flags and this rank's status, so that an error on
  // one rank is an error on every rank, never a silent difference. With a hook, after its
  // futures: its continuations issue collectives, and a failure there is a status too.
  if (!hook_runner_.active()) issue_flags(local_used, read_later);

  // Wait without holding the lock: no hook can fire now, and a collective must never
  // run under a lock.
  lock.unlock();
  const auto wait_start = Clock::now();
  std::exception_ptr failure;
  if (hook_runner_.active()) {
    std::vector<detail::HookRunner::Failure> hook_failures;
    try {
      hook_runner_.complete(buckets_, /*interrupted=*/false, hook_failures);
    } catch (...) {
      failure = std::current_exception();
    }
    lock.lock(); // the flags carry the hook's failures; the deferred reads are shared state
    for (const auto& f : hook_failures) record_hook_failure(f.bucket, iteration, f.what);
    read_later = can_read_later(local_used, iteration);
    if (!failure) {
      try {
        issue_flags(local_used, read_later);
      } catch (...) {
        failure = std::current_exception();
      }
    }
    stats.hook_bytes_per_iteration = hook_runner_.take_bytes();
    hook_runner_.record_timeline(timeline, iteration); // its futures are complete: the ends are known
    lock.unlock();
  }
  if (!failure) failure = wait_for_section(iteration, read_later);
  // After the status exchange, on every rank that got this far (an interrupted section
  // issues the same, empty, at its next forward: settle_interrupted_backward).
  std::string sparse_error;
  bool sparse_failed = false;
  if (!failure && sparse_.any()) {
    try {
      sparse_error = exchange_sparse(/*contribute=*/true);
    } catch (...) {
      failure = std::current_exception();
      sparse_failed = true;
    }
  }
  const auto wait_end = Clock::now();

  lock.lock();
  if (failure) {
    // Completing the section again would pair a second sparse exchange with whatever the
    // peers issue next.
    if (sparse_failed) {
      step_check_.mark_broken(fmt::format("{} the sparse gradients of training step {} could not be exchanged: the "
                                          "ranks are out of step; restart from the last checkpoint.",
                                          rank_prefix(), step_check_.step()));
    }
    // Left in kBackward: the next forward completes this section with the other ranks
    // (settle_interrupted_backward) or reports that they are out of step.
    recovery_.set_cause("a collective of this backward timed out");
    // Deferred: a header that has arrived may say why (a peer out of step, or finished).
    if (step_check_.deferred()) {
      try {
        step_check_.drain(/*block=*/false);
      } catch (const ReductionError&) {
        throw;
      } catch (...) {
      }
    }
    std::rethrow_exception(failure);
  }
  const bool all_ok = read_used_by(local_used, read_later);
  // A parameter no rank used keeps its .grad untouched.
  if (all_ok) buckets_.write_back(unused_.used_by(), /*all_used=*/read_later);
  if (all_ok && sparse_error.empty()) sparse_.write_back(unused_.used_by(), /*all_used=*/read_later);
  if (!sparse_error.empty()) record_error(std::move(sparse_error)); // the same on every rank
  if (options.static_graph() && !static_graph_.learned) {
    static_graph_.local_used = local_used;
    static_graph_.used_by = unused_.used_by();
    static_graph_.learned = true;
  }
  if (iteration == 0) share_ready_order(lock, all_ok);
  if (!read_later) {
    unused_.record(unused_.used_by(), iteration);
    unused_.report(unused_.used_by(), world_size_ > 1 ? status_row_.host_rows() : nullptr, local_used, iteration,
                   options);
  }

  const auto end = Clock::now();
  stats.iterations += 1;
  stats.finalize_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count();
  stats.finalize_wait_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(wait_end - wait_start).count();
  timeline.record(Timeline::Kind::kFinalizeWait, -1, iteration, wait_start, wait_end);
  timeline.record(Timeline::Kind::kFinalize, -1, iteration, start, end);
  timeline.record(Timeline::Kind::kBackward, -1, iteration, backward_start_, end);

  std::string error = std::move(pending_error_);
  const int64_t step = step_check_.step();
  reset_iteration();
  phase_ = Phase::kFinalized;
  iteration_ += 1;
  throw_step_error(std::move(error), all_ok, step);
}

void Reducer::Impl::sweep_unmarked() {
  // Whatever got no gradient contributes zeros (or its no_sync accumulation).
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (!marks_.marked[i]) mark_without_hook(i);
  }
  launch_ready_buckets();
  DDP_CHECK_EQ(buckets_.launched(), buckets_.size());
}

void Reducer::Impl::check_lost_gradients() {
  // A parameter that had a gradient last step and has none now: a changed graph, or a
  // parameter cast, moved or replaced since (its hook is gone). Check it now, so that such
  // a change is an error on every rank in this very step, before any rank writes averaged
  // gradients, and re-check the module at the next forward.
  const std::vector<char>& last = unused_.local_used();
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (last[i] && !marks_.local_used[i]) {
      check_due_ = true;
      break;
    }
  }
  if (!check_due_) return;
  try {
    snapshot_.check_unchanged(parameters, names, rank_);
    if (module_watch.check) {
      module_watch.full_check_this_forward = true;
      module_watch.check();
    }
  } catch (const ReductionError& e) {
    record_error(e.what());
  }
}

void Reducer::Impl::check_static_graph(const std::vector<char>& local_used, int64_t iteration) {
  // A Join shadow uses no parameter by design: not a changed static graph.
  if (!options.static_graph() || !static_graph_.learned || join_.shadowing()) return;
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (static_graph_.local_used[i] && !local_used[i]) {
      record_error(fmt::format(
          "{} static_graph=true, but parameter '{}' received no gradient in iteration {} though it did in the "
          "first iteration: the graph changed. Set Options::static_graph = false for models whose used "
          "parameters vary.",
          rank_prefix(), names[i], iteration));
      return;
    }
  }
}

bool Reducer::Impl::can_read_later(const std::vector<char>& local_used, int64_t iteration) const {
  // Deferred step check: the host reads this backward's flags later (StepCheck::drain),
  // unless it needs them now: this rank left a parameter without a gradient (whether
  // another rank used it decides whether its .grad is written), the first iteration
  // (bucket order, static graph), or this rank's own error (every rank must see it in
  // this step).
  const bool used_everything = std::all_of(local_used.begin(), local_used.end(), [](char used) { return used != 0; });
  return step_check_.deferred() && world_size_ > 1 && used_everything && iteration > 0 && pending_error_.empty() &&
         (!options.static_graph() || static_graph_.learned);
}

void Reducer::Impl::issue_flags(const std::vector<char>& local_used, bool read_later) {
  if (read_later) {
    const at::Tensor row = status_row_.make_row(/*used=*/1, StatusRow::kOk);
    status_row_.work() = step_check_.gather_deferred(StepCheck::PendingRead::Kind::kFlags,
                                                     step_check_.to_comm_device(row), iteration_);
    stats.collectives += 1;
    stats.deferred_flag_reads += 1;
  } else if (world_size_ > 1) {
    const uint8_t status = pending_error_.empty()                ? StatusRow::kOk
                           : hook_runner_.failed_bucket() >= 0 ? StatusRow::kHookError
                                                               : StatusRow::kLocalError;
    status_row_.issue(local_used, status, hook_runner_.failed_bucket());
    stats.collectives += 1;
  }
}

std::exception_ptr Reducer::Impl::wait_for_section(int64_t iteration, bool read_later) {
  const bool on_stream = process_group->device().is_cuda();
  try {
    for (size_t b = 0; b < buckets_.size() && !hook_runner_.active(); ++b) {
      if (!buckets_.bucket(b).work()) continue; // skipped: no rank used it (BucketSkip)
      Work& work = *buckets_.bucket(b).work();
      if (read_later && on_stream) {
        work.wait(); // a stream wait: the copies back below follow it on the GPU
      } else {
        work.wait(options.timeout());
      }
      // A collective waited for on the stream only may not have finished yet: its end is
      // not known on the host, so the timeline leaves it out.
      if (timeline.enabled() && work.is_completed()) {
        timeline.record(Timeline::Kind::kCollective, static_cast<int64_t>(b), iteration, work.start_time(),
                        work.end_time(), static_cast<int64_t>(buckets_.bucket(b).bytes()),
                        buckets_.precision().ordered() ? "allreduce_ordered" : "allreduce");
      }
    }
    const auto& flags = status_row_.work();
    if (flags && !read_later) {
      flags->wait(options.timeout());
      timeline.record(Timeline::Kind::kUsedFlags, -1, iteration, flags->start_time(), flags->end_time());
    }
  } catch (...) {
    return std::current_exception();
  }
  return nullptr;
}

std::string Reducer::Impl::exchange_sparse(bool contribute) {
  if (!contribute) sparse_.drop_contributions();
  return sparse_.exchange(*process_group, buckets_.divisor(), options.timeout(), stats);
}

bool Reducer::Impl::read_used_by(const std::vector<char>& local_used, bool read_later) {
  const size_t n = parameters.size();
  std::vector<int64_t>& used_by = unused_.used_by();
  std::vector<uint8_t>& statuses = status_row_.statuses(); // sized at construction: no allocation per step
  if (world_size_ == 1) {
    for (size_t i = 0; i < n; ++i) used_by[i] = local_used[i];
    statuses[0] = pending_error_.empty() ? StatusRow::kOk : StatusRow::kLocalError;
  } else if (read_later) {
    // This rank used every parameter, so each gets the average; the ranks' statuses and
    // the report wait for StepCheck::drain.
    std::fill(statuses.begin(), statuses.end(), StatusRow::kOk);
  } else {
    StatusRow::decode(status_row_.gathered(), n, world_size_, used_by, statuses);
  }
  if (options.static_graph() && static_graph_.learned && !read_later) used_by = static_graph_.used_by;
  return StatusRow::all_ok(statuses);
}

void Reducer::Impl::share_ready_order(std::unique_lock<std::mutex>& lock, bool all_ok) {
  const std::vector<size_t>& ready_order = buckets_.complete_order();
  // Every rank rebuilds its buckets from rank 0's order at the next forward. The order
  // travels inside this section, after its status exchange showed every rank in step.
  if (!all_ok) return;
  const size_t n = parameters.size();
  at::Tensor order = at::empty({static_cast<int64_t>(n)}, at::kLong);
  auto* data = order.data_ptr<int64_t>();
  for (size_t k = 0; k < n; ++k) data[k] = static_cast<int64_t>(ready_order[k]);
  if (world_size_ > 1) {
    at::Tensor on_device = order.to(process_group->device());
    stats.collectives += 1;
    lock.unlock(); // the broadcast waits on the network
    std::exception_ptr failure;
    try {
      process_group->broadcast(on_device, 0)->wait(options.timeout());
    } catch (...) {
      failure = std::current_exception();
    }
    lock.lock();
    if (failure) {
      step_check_.mark_broken(fmt::format("{} the first iteration's bucket order could not be shared: the ranks are "
                                          "out of step; restart from the last checkpoint.",
                                          rank_prefix()));
      std::rethrow_exception(failure);
    }
    order = on_device.cpu();
    data = order.data_ptr<int64_t>();
  }
  buckets_.set_rebuild_order(std::vector<size_t>(data, data + n));
}

void Reducer::Impl::throw_step_error(std::string error, bool all_ok, int64_t step) {
  const bool deferred = step_check_.deferred();
  if (!error.empty()) {
    // Deferred: the other ranks read this rank's status only after writing this step's
    // gradients, and then stop; so does this one.
    if (deferred && world_size_ > 1) {
      step_check_.mark_broken(error + " With the deferred step check (the default on a CUDA process group) the "
                                      "other ranks learn of it after writing this step's gradients, so the reducer "
                                      "stops on every rank: restart from the last checkpoint (DDP_STEP_CHECK=strict "
                                      "keeps such a step recoverable).");
      step_check_.throw_if_broken();
    }
    throw ReductionError(error);
  }
  if (all_ok) return;
  const std::string who = describe_failures(status_row_.statuses(), status_row_.host_rows());
  if (deferred) {
    // The failed rank stops (deferred step check), so this one cannot go on either.
    step_check_.mark_broken(fmt::format("{} the gradients of training step {} are not averaged: {}. With the deferred "
                                        "step check that rank stops, so the reducer stops on every rank: restart from "
                                        "the last checkpoint.",
                                        rank_prefix(), step, who));
    step_check_.throw_if_broken();
  }
  throw ReductionError(fmt::format(
      "{} the gradients of training step {} are not averaged: {}. No rank wrote averaged gradients for this step "
      "(gradients reduced in place or as bucket views hold partial sums): zero the gradients and go on with the "
      "next batch; the ranks are still in step.",
      rank_prefix(), step, who));
}

void Reducer::Impl::check_flags(const StepCheck::PendingRead& read) {
  const size_t n = parameters.size();
  const uint8_t* rows = read.host.data_ptr<uint8_t>();
  std::vector<int64_t> used_by(n, 0);
  std::vector<uint8_t> statuses(static_cast<size_t>(world_size_), StatusRow::kOk);
  StatusRow::decode(rows, n, world_size_, used_by, statuses);
  if (!StatusRow::all_ok(statuses)) {
    step_check_.fail_out_of_step(
        fmt::format("{} the backward of training step {} did not go right: {}. With the deferred step check (the "
                    "default on a CUDA process group; Options::step_check, DDP_STEP_CHECK) the ranks' statuses are "
                    "read once they arrive, so this rank had already written that step's gradients, averaged with an "
                    "incomplete contribution, and an optimizer step taken with them may differ across ranks. The "
                    "reducer stops on every rank: restart from the last checkpoint. With DDP_STEP_CHECK=strict such "
                    "a step is recoverable, at one host synchronisation per step.",
                    rank_prefix(), read.step, describe_failures(statuses, rows)),
        /*paired_wrongly=*/false);
  }
  if (options.static_graph() && static_graph_.learned) used_by = static_graph_.used_by;
  unused_.record(used_by, read.iteration);
  // A read is deferred only when this rank used every parameter in that backward.
  unused_.report(used_by, rows, std::vector<char>(n, 1), read.iteration, options);
}

std::string Reducer::Impl::describe_failures(const std::vector<uint8_t>& statuses, const uint8_t* rows) const {
  return StatusRow::describe_failures(statuses, rows, parameters.size(), hook_runner_.name(), [this](int32_t b) {
    return static_cast<size_t>(b) < buckets_.size() ? buckets_.members_text(static_cast<size_t>(b)) : std::string();
  });
}

} // namespace ddp
