// Reducer::Impl during a backward: the outputs' pre-hook, each gradient hook (into its
// slot, or again for a parameter whose hook runs more than once), the parameters that
// get no hook, and the launch of every bucket that is complete, in bucket order (or its
// skip when no rank used it). The phases around it are in reducer_impl.cpp; the end of a
// backward in finalize.cpp.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <ddp/error.h>

#include "reducer/reducer_impl.h"

namespace ddp {

void Reducer::Impl::on_backward_start() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (phase_ == Phase::kFinalized) extra_backward_ = true;
  // Hooks already ran, in a nested backward that started before the outputs were reached:
  // this (enclosing) graph task gets the end-of-backward callback too.
  if (phase_ == Phase::kBackward) queue_finalize();
  if (phase_ != Phase::kArmed) return;
  begin_backward(Clock::now());
  launch_ready_buckets();
}

void Reducer::Impl::on_gradient_ready(size_t index, const at::Tensor& incoming) {
  const auto start = Clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  switch (phase_) {
    case Phase::kArmedNoSync:
      marks_.local_used[index] = 1;
      return;
    case Phase::kIdle:
      throw ReductionError(fmt::format(
          "{} parameter '{}' received a gradient, but the reducer was not prepared for this backward. With "
          "ddp::Reducer directly, call prepare_for_forward() before and prepare_for_backward(outputs) after each "
          "forward. With DistributedDataParallel, run the forward through the wrapper (model(x), not "
          "model->module()->forward(x)), in train mode: a forward after model->eval() is evaluation only and is not "
          "reduced (call model->train() first; keep a submodule such as BatchNorm in eval mode with "
          "model->module()->bn->eval()).",
          rank_prefix(), names[index]));
    case Phase::kFinalized:
      if (extra_backward_) {
        throw ReductionError(fmt::format(
            "{} parameter '{}' was marked ready twice: it received a gradient after the reduction of training "
            "step {} was written back into .grad, from a backward that reached that step's outputs again (a second "
            "backward() after one forward). Runs of a hook within one backward, nested (reentrant) backward passes "
            "included, are reduced together; a separate backward() is not. Sum the losses and call backward() "
            "once, or run the earlier backward passes under no_sync() so that only the last one reduces.",
            rank_prefix(), names[index], step_check_.step()));
      }
      throw ReductionError(fmt::format(
          "{} parameter '{}' received a gradient from a backward whose forward did not run through the wrapper: the "
          "gradients of training step {} were already reduced and no output of a later forward through the wrapper "
          "was reached. Run the forward as model(x), not model->module()->forward(x) or a submodule called "
          "directly (for a forward that must not be reduced use no_sync()), and in train mode: a forward after "
          "model->eval() is evaluation only and is not reduced (call model->train() first).",
          rank_prefix(), names[index], step_check_.step()));
    case Phase::kArmed:
      begin_backward(start);
      break;
    case Phase::kBackward:
      break;
  }
  // Every graph task a hook runs in gets the end-of-backward callback (a nested backward
  // is a task of its own); the outermost one's finalizes.
  queue_finalize();
  const int64_t runs = multi_fire_.count_run(index);
  // A sparse gradient is taken as it is (SparseGradients); a dense one goes into its slot.
  const bool sparse = sparse_.expects(index);
  if (runs > 1 && sparse) {
    // The accumulator summed this run into .grad: take that sum (exchanged in finalize).
    if (auto error = sparse_.take(index)) record_error(std::move(*error));
  } else if (runs > 1) {
    on_gradient_again(index, incoming);
  } else if (marks_.marked[index]) {
    // Marked before backward (its slot holds zeros, its bucket may be launched or skipped).
    if (options.static_graph() && static_graph_.learned) {
      record_error(fmt::format(
          "{} static_graph=true, but parameter '{}' received a gradient in iteration {} and none in the first "
          "iteration: the graph changed. Set Options::static_graph = false for models whose used parameters vary.",
          rank_prefix(), names[index], iteration_));
    } else {
      record_error(fmt::format(
          "{} parameter '{}' received a gradient in iteration {}, but find_unused_parameters found it unreachable "
          "from the forward's outputs: the loss uses a tensor that the forward did not return (a member, a global), "
          "or a reentrant checkpoint uses the parameter without taking it as an input. Return every tensor the loss "
          "uses from forward(), pass the parameters a checkpointed block uses to the checkpoint function, or set "
          "find_unused_parameters = false.",
          rank_prefix(), names[index], iteration_));
    }
    return;
  } else {
    marks_.local_used[index] = 1;
    if (auto error = sparse ? sparse_.take(index) : buckets_.copy_gradient(index)) record_error(std::move(*error));
    if (iteration_ == 0) buckets_.record_ready(index);
  }
  if (sparse) {
    marks_.marked[index] = 1; // no slot, no bucket
  } else if (!marks_.marked[index] && multi_fire_.complete(index)) {
    // The slot is complete at the last run the previous backward saw (MultiFire).
    marks_.marked[index] = 1;
    if (buckets_.mark_ready(index) && timeline.enabled()) {
      const auto now = Clock::now();
      timeline.record(Timeline::Kind::kBucketReady, static_cast<int64_t>(buckets_.slot(index).bucket), iteration_,
                      now, now);
    }
    launch_ready_buckets();
  }
  const auto end = Clock::now();
  stats.hook_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count();
  timeline.record(Timeline::Kind::kHook, static_cast<int64_t>(index), iteration_, start, end);
}

void Reducer::Impl::on_gradient_again(size_t index, const at::Tensor& incoming) {
  // A run flagged unused before backward already recorded its error at the first run.
  if (marks_.marked_early[index] && !marks_.local_used[index]) return;
  // A run without a gradient (the accumulator reached by an edge that carried none, as a
  // reentrant checkpoint's parameter inputs do in the enclosing backward) adds nothing.
  if (!incoming.defined()) return;
  if (!buckets_.launched(index)) {
    if (auto error = buckets_.add_again(index, incoming)) record_error(std::move(*error));
    return;
  }
  // Late: its bucket is on the wire. Reduced after the buckets, in a follow-up all-reduce.
  const at::Tensor& grad = parameters[index].grad();
  auto& bucket = buckets_.bucket(buckets_.slot(index).bucket);
  if (grad.defined() && grad.is_alias_of(bucket.in_place() ? bucket.comm_tensor() : bucket.flat())) {
    // The accumulator added into the storage a collective was reducing (its runs were known
    // to be fewer, so its .grad was left in place): that reduction cannot be trusted.
    record_error(fmt::format(
        "{} parameter '{}' received a gradient {} times in iteration {}, more than in the iterations before, and "
        "its accumulator added the last one into its bucket while that bucket was being reduced "
        "(gradient_as_bucket_view, or a large gradient reduced in place). This step is not averaged on any rank; "
        "zero the gradients and go on: the next steps expect the new count.",
        rank_prefix(), names[index], multi_fire_.runs(index), iteration_));
    return;
  }
  multi_fire_.add_late(index, incoming, buckets_.scale(), buckets_.view(index));
  stats.late_gradients += 1;
}

void Reducer::Impl::mark_without_hook(size_t index) {
  const bool used_locally = marks_.local_used[index] != 0;
  if (auto error = sparse_.expects(index) ? sparse_.take_without_hook(index, used_locally)
                                          : buckets_.fill_without_hook(index, used_locally)) {
    record_error(std::move(*error));
  }
  marks_.marked[index] = 1;
}

void Reducer::Impl::launch_ready_buckets() {
  // Launch strictly in bucket order, so every rank issues the same sequence, and only
  // after this section's header matched on every rank.
  if (buckets_.next_ready()) verify_reduction_header();
  if (!step_check_.verified()) return;
  buckets_.launch_ready([this](size_t b) { return launch_bucket(b); });
}

bool Reducer::Impl::skips_bucket(size_t b) {
  // A hook is handed every bucket (its state, PowerSGD's error feedback, may count them).
  if (hook_runner_.active()) return false;
  const auto& members = buckets_.bucket(b).members();
  // Used here, or contributing a no_sync() accumulation: no rank skips it, headers unread.
  if (!skip_.locally_unused(members)) return false;
  if (world_size_ == 1) return true;
  // Every rank's bitmap: after verify() (strict), or read now (deferred; this rank left a
  // parameter without a gradient, so it reads the used flags on the host this step anyway).
  const int64_t* records = step_check_.section_records();
  return detail::BucketSkip::unused_everywhere(records, world_size_, step_check_.record_length(),
                                               detail::StepCheck::kRecordLength, members);
}

bool Reducer::Impl::launch_bucket(size_t b) {
  detail::Bucket& bucket = buckets_.bucket(b);
  if (skips_bucket(b)) {
    // Its slots hold zeros on every rank, and no rank's used flags will ask for its
    // average: .grad stays untouched, as after an all-reduce of zeros.
    stats.buckets_skipped += 1;
    stats.bytes_skipped += static_cast<int64_t>(bucket.bytes());
    return false;
  }
  if (hook_runner_.active()) {
    if (auto failure = hook_runner_.run(buckets_, b, iteration_)) record_hook_failure(b, iteration_, *failure);
    return true;
  }
  bucket.work() = buckets_.precision().ordered()
                      ? process_group->allreduce_ordered(bucket.comm_tensor(), buckets_.ordered_reduce(b))
                      : process_group->allreduce(bucket.comm_tensor());
  return true;
}

} // namespace ddp
