// Reducer::Impl::finalize: the end of a synchronised backward, queued on the autograd
// engine by the first hook. It runs as a short sequence of named steps:
//   sweep            parameters that got no gradient contribute zeros; every bucket launched
//   checks           a lost gradient (a changed module), a changed static graph
//   flags            the used flags and this rank's status, to every rank
//   wait             (lock released) the hook's futures, the buckets, the flags
//   sparse           (lock released) the sparse gradients, gathered and summed
//   read             how many ranks used each parameter, and every rank's status
//   late             contributions of hooks that ran after their bucket launched: one
//                    follow-up all-reduce per such parameter, on every rank
//   write back       the averages into .grad, where some rank used the parameter
//   learn            iteration 0: static graph, and rank 0's ready order for the rebuild
//   tune             Options::bucket_cap_autotune: time this backward, next candidate, or the choice
//   report           the parameters no rank (or not every rank) used
//   end              a new iteration; this step's error, if any, on every rank
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

#include <ddp/error.h>

#include "common/check.h"
#include "common/logging.h"
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
  check_late_runs(iteration);
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
  if (!failure) failure = wait_for_section(iteration, read_later, local_used);
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
  // Every rank read the same rows: the same late parameters, the same follow-ups.
  if (all_ok && follow_up_allowed(iteration)) {
    late_anywhere_ = world_size_ > 1 ? detail::MultiFire::decode_late(status_row_.host_rows(), parameters.size(),
                                                                      world_size_, parameters.size() +
                                                                                       StatusRow::kStatusBytes,
                                                                      marks_.late)
                                     : multi_fire_.any_late();
    if (world_size_ == 1) {
      for (size_t i = 0; i < parameters.size(); ++i) marks_.late[i] = multi_fire_.late_here(i);
    }
    if (late_anywhere_) {
      if (auto late_failure = reduce_late(lock)) {
        recovery_.set_cause("a follow-up all-reduce of late gradients failed");
        std::rethrow_exception(late_failure);
      }
    }
  }
  // A parameter no rank used keeps its .grad untouched.
  if (all_ok) buckets_.write_back(unused_.used_by(), /*all_used=*/read_later);
  if (all_ok && late_anywhere_) add_late_averages();
  multi_fire_.learn();
  if (all_ok && sparse_error.empty()) sparse_.write_back(unused_.used_by(), /*all_used=*/read_later);
  if (!sparse_error.empty()) record_error(std::move(sparse_error)); // the same on every rank
  // The buckets not handed over while the others were on the wire (one that some
  // parameter got no gradient on this rank waited for every rank's used flags), after
  // the late contributions were added.
  if (all_ok && reduced_callback_ && pending_error_.empty()) {
    check_reported_late();
    for (size_t b = 0; b < buckets_.size() && pending_error_.empty(); ++b) {
      if (!reported_[b]) report_reduced(b, iteration);
    }
  }
  if (options.static_graph() && !static_graph_.learned) {
    static_graph_.local_used = local_used;
    static_graph_.used_by = unused_.used_by();
    static_graph_.learned = true;
  }
  if (iteration == 0) share_ready_order(lock, all_ok);
  if (autotune_.tuning()) tune_bucket_cap(lock, iteration, all_ok, Clock::now());
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
  // Whatever got no gradient contributes zeros (or its no_sync accumulation); a slot
  // waiting for more runs of its hook than came (MultiFire) is complete as it is.
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (marks_.marked[i]) continue;
    if (multi_fire_.runs(i) > 0) {
      marks_.marked[i] = 1;
      buckets_.mark_ready(i);
    } else {
      mark_without_hook(i);
    }
  }
  launch_ready_buckets();
  DDP_CHECK_EQ(buckets_.launched(), buckets_.size());
}

bool Reducer::Impl::follow_up_allowed(int64_t iteration) const {
  // Strict: every rank reads the rows now. Deferred: only in the first iteration (a rank
  // that used every parameter reads them later after it), so a late run after it is an
  // error (check_late_runs).
  return !step_check_.deferred() || world_size_ == 1 || iteration == 0;
}

void Reducer::Impl::check_late_runs(int64_t iteration) {
  if (!multi_fire_.any_late() || follow_up_allowed(iteration)) return;
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (!multi_fire_.late_here(i)) continue;
    record_error(fmt::format(
        "{} parameter '{}' received a gradient {} times in iteration {}, more than in the iterations before, and the "
        "last one came after its bucket was reduced. With the deferred step check (the default on a CUDA process "
        "group) such a late gradient is reduced only in the first iteration, when every rank reads the others' "
        "flags; afterwards the counts must stay as learned. Set Options::step_check to strict (DDP_STEP_CHECK=strict) "
        "for models whose counts vary.",
        rank_prefix(), names[i], multi_fire_.runs(i), iteration));
    return;
  }
}

std::exception_ptr Reducer::Impl::reduce_late(std::unique_lock<std::mutex>& lock) {
  // One all-reduce per late parameter, in index order on every rank; a rank without a late
  // contribution sends zeros. Pre-divided like the slots (or divided by the ordered sum).
  std::vector<std::shared_ptr<Work>> works;
  const bool ordered = buckets_.precision().ordered();
  std::exception_ptr failure;
  std::vector<size_t> late;
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (marks_.late[i]) late.push_back(i);
  }
  if (world_size_ > 1) {
    lock.unlock(); // a collective never runs under the lock; no hook fires now
    try {
      for (size_t i : late) {
        at::Tensor& t = multi_fire_.late_tensor(i, buckets_.view(i));
        works.push_back(ordered ? process_group->allreduce_ordered(t, buckets_.ordered_reduce(buckets_.slot(i).bucket))
                                : process_group->allreduce(t));
      }
      for (auto& w : works) w->wait(options.timeout());
    } catch (...) {
      failure = std::current_exception();
    }
    lock.lock();
  }
  stats.collectives += static_cast<int64_t>(works.size());
  stats.follow_up_collectives += static_cast<int64_t>(works.size());
  return failure;
}

void Reducer::Impl::add_late_averages() {
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (!marks_.late[i]) continue;
    at::Tensor& grad = const_cast<at::Tensor&>(parameters[i]).mutable_grad();
    const at::Tensor& average = multi_fire_.late_tensor(i, buckets_.view(i));
    if (grad.defined()) {
      grad.add_(average);
    } else {
      grad = average.clone();
    }
  }
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
  // While autotune tunes, the flags are read now too: the host then waits for the
  // collectives, so each backward's time includes them, and every rank knows at the
  // decision whether every rank was ok.
  return step_check_.deferred() && world_size_ > 1 && used_everything && iteration > 0 && pending_error_.empty() &&
         (!options.static_graph() || static_graph_.learned) && !autotune_.tuning();
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
    // Each parameter's byte: used, late, and its hook's runs (MultiFire::encode).
    multi_fire_.encode_row(local_used, marks_.row);
    status_row_.issue(marks_.row, status, hook_runner_.failed_bucket());
    stats.collectives += 1;
  }
}

std::exception_ptr Reducer::Impl::wait_for_section(int64_t iteration, bool read_later,
                                                   const std::vector<char>& local_used) {
  const bool on_stream = process_group->device().is_cuda();
  reported_.assign(buckets_.size(), 0);
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
      // Its averages are final: an overlapped optimizer updates its parameters while the
      // later buckets are still reduced (on a GPU, on the stream, after the collective).
      if (reports_early(b, local_used)) {
        buckets_.write_back_bucket(b, unused_.used_by(), /*all_used=*/true);
        report_reduced(b, iteration);
        stats.buckets_reported_early += 1;
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

void Reducer::Impl::tune_bucket_cap(std::unique_lock<std::mutex>& lock, int64_t iteration, bool all_ok,
                                    Clock::time_point end) {
  int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(end - backward_start_).count();
  const auto timed_cap = autotune_.timed_cap(iteration);
  if (timed_cap && detail::BucketCapAutotuner::timing_override()) {
    if (const auto injected = detail::BucketCapAutotuner::timing_override()(rank_, iteration, *timed_cap)) {
      ns = *injected;
    }
  }
  autotune_.record(iteration, backward_start_, end, ns);
  if (autotune_.decides_at(iteration)) {
    // all_ok is the same on every rank here (the flags are read now while tuning): a step
    // some rank failed postpones the choice, on every rank, to the next one that succeeds.
    if (all_ok) decide_bucket_cap(lock, iteration);
    return;
  }
  if (const auto cap = autotune_.cap_after(iteration)) buckets_.set_bucket_cap(*cap);
}

void Reducer::Impl::decide_bucket_cap(std::unique_lock<std::mutex>& lock, int64_t iteration) {
  const size_t k = autotune_.candidates();
  const std::vector<int64_t> local = autotune_.medians();
  std::vector<int64_t> gathered = local;
  int64_t choice = 0;
  if (world_size_ > 1) {
    const auto on_device = at::TensorOptions().dtype(at::kLong).device(process_group->device());
    at::Tensor mine = at::tensor(c10::ArrayRef<int64_t>(local), at::TensorOptions().dtype(at::kLong)).to(process_group->device());
    at::Tensor all = at::empty({world_size_, static_cast<int64_t>(k)}, on_device);
    std::vector<at::Tensor> rows;
    for (int r = 0; r < world_size_; ++r) rows.push_back(all[r]);
    at::Tensor chosen = at::zeros({1}, on_device);
    stats.collectives += 2;
    lock.unlock(); // the collectives wait on the network
    std::exception_ptr failure;
    try {
      process_group->allgather(rows, mine)->wait(options.timeout());
      const at::Tensor host = all.cpu();
      gathered.assign(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
      // Rank 0 decides; the others take its choice, whatever their own rows say.
      if (rank_ == 0) chosen.fill_(static_cast<int64_t>(detail::BucketCapAutotuner::decide(gathered, world_size_, k).candidate));
      process_group->broadcast(chosen, 0)->wait(options.timeout());
      choice = chosen.cpu().item<int64_t>();
    } catch (...) {
      failure = std::current_exception();
    }
    lock.lock();
    if (failure) {
      step_check_.mark_broken(fmt::format("{} Options::bucket_cap_autotune's choice could not be shared: the ranks "
                                          "are out of step; restart from the last checkpoint.",
                                          rank_prefix()));
      std::rethrow_exception(failure);
    }
  } else {
    choice = static_cast<int64_t>(detail::BucketCapAutotuner::decide(gathered, 1, k).candidate);
  }
  DDP_CHECK(choice >= 0 && static_cast<size_t>(choice) < k, "rank 0's autotune choice is a candidate");
  // What rank 0 decided from (every rank received the same rows): for the log and the timeline.
  const auto why = detail::BucketCapAutotuner::decide(gathered, world_size_, k);
  autotune_.settle(static_cast<size_t>(choice));
  buckets_.set_bucket_cap(autotune_.chosen_mb());
  stats.autotuned_bucket_cap_mb = autotune_.chosen_mb();
  stats.autotune_iterations = iteration + 1;
  const auto now = Clock::now();
  for (size_t c = 0; c < k; ++c) {
    const auto [first, last] = autotune_.window(c);
    timeline.record(Timeline::Kind::kAutotuneCandidate, static_cast<int64_t>(c), iteration, first, last,
                    static_cast<int64_t>(autotune_.candidate_mb(c) * 1048576.0), nullptr, why.slowest[c]);
  }
  timeline.record(Timeline::Kind::kAutotuneChoice, choice, iteration, now, now,
                  static_cast<int64_t>(autotune_.chosen_mb() * 1048576.0));
  if (rank_ == 0) {
    std::string table;
    for (size_t c = 0; c < k; ++c) {
      table += fmt::format("{}{:g} MiB {:.3f} ms", c ? ", " : "", autotune_.candidate_mb(c), why.slowest[c] / 1e6);
    }
    detail::log(detail::LogLevel::kInfo, rank_,
                "bucket_cap_autotune chose bucket_cap_mb={:g} after {} iterations: the smallest slowest-rank median "
                "backward (first hook to the end of finalize) over {} ranks; per candidate: {}",
                autotune_.chosen_mb(), iteration + 1, world_size_, table);
  }
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

bool Reducer::Impl::reports_early(size_t b, const std::vector<char>& local_used) const {
  // This rank's own error zeroed a slot: the step ends in an error on every rank.
  if (!reduced_callback_ || reduced_owner_.expired() || !pending_error_.empty()) return false;
  for (size_t i : buckets_.bucket(b).members()) {
    if (!local_used[i]) return false; // whether some rank used it is known only from the flags
    // Runs per backward not known yet (its .grad may be detached until the write-back), or
    // a late run here: a follow-up all-reduce adds to this average after the flags.
    if (!multi_fire_.settled()[i] || multi_fire_.late_here(i)) return false;
  }
  return true;
}

void Reducer::Impl::check_reported_late() {
  // A late run on another rank, of a parameter whose runs were learned, after this rank's
  // bucket was handed over: the update used the average without the late part.
  if (!late_anywhere_ || !pending_error_.empty()) return;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    if (!reported_[b]) continue;
    for (size_t i : buckets_.bucket(b).members()) {
      if (!marks_.late[i]) continue;
      pending_error_ = fmt::format(
          "{} parameter '{}' received a gradient after its bucket was reduced (its hook ran more times than in the "
          "iterations before, on some rank), but the overlapped optimizer had already updated it from the bucket's "
          "average: its update in this step misses the late part. Keep the number of times each parameter's hook "
          "runs per backward the same from step to step, or step a plain torch::optim optimizer after backward()",
          rank_prefix(), names[i]);
      return;
    }
  }
}

void Reducer::Impl::report_reduced(size_t b, int64_t iteration) {
  reported_[b] = 1;
  const auto owner = reduced_owner_.lock();
  if (!owner) return;
  const auto start = Clock::now();
  reduced_callback_(b, buckets_.bucket(b).members());
  const auto end = Clock::now();
  stats.reduced_callback_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count();
  timeline.record(Timeline::Kind::kOptimizerStep, static_cast<int64_t>(b), iteration, start, end);
}

} // namespace ddp
