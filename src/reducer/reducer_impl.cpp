// Reducer::Impl, the iteration state machine: construction, the forward-side edges
// (prepare_for_forward, prepare_for_backward, module state, Join, hook registration) and
// the move from kArmed to kBackward (begin_backward, the end-of-backward callback). The
// gradient hooks and bucket launches are in gradient_ready.cpp; finalize, the end of a
// backward, in finalize.cpp.
#include "reducer/reducer_impl.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/graph_task.h>

#include <algorithm>

#include <ddp/collectives.h>
#include <ddp/error.h>

#include "bucket/bucket_assignment.h"
#include "comm/consistency_check.h"
#include "common/logging.h"
#include "reducer/parameter_registry.h"
#include "reducer/scoped_timer.h"

namespace ddp {
namespace {

using detail::StepCheck;

// Fires when the backward pass reaches one of the forward's outputs, so that a rank
// whose loss reaches the model but none of its parameters still runs finalize and
// issues the same collectives as the others.
class BackwardStartHook : public torch::autograd::FunctionPreHook {
 public:
  explicit BackwardStartHook(std::weak_ptr<Reducer::Impl> reducer) : reducer_(std::move(reducer)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    if (auto reducer = reducer_.lock()) reducer->on_backward_start();
    return grads;
  }

 private:
  std::weak_ptr<Reducer::Impl> reducer_;
};

// Put on the next nodes of the enclosing graph task's node when a nested (reentrant)
// backward ended inside it and no end-of-backward callback is queued on the enclosing
// task yet: the first of them to run queues it there. Inert after that iteration.
class RequeueFinalizeHook : public torch::autograd::FunctionPreHook {
 public:
  RequeueFinalizeHook(std::weak_ptr<Reducer::Impl> reducer, int64_t iteration)
      : reducer_(std::move(reducer)), iteration_(iteration) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    if (auto reducer = reducer_.lock()) reducer->requeue_finalize(iteration_);
    return grads;
  }

 private:
  std::weak_ptr<Reducer::Impl> reducer_;
  const int64_t iteration_;
};

std::string timeline_path_for(const std::string& path, int rank) {
  const auto slash = path.find_last_of('/');
  const auto dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) {
    return fmt::format("{}.rank{}", path, rank);
  }
  return fmt::format("{}.rank{}{}", path.substr(0, dot), rank, path.substr(dot));
}

std::vector<std::string> names_of(const Reducer::NamedParameters& named) {
  std::vector<std::string> out;
  for (const auto& [name, t] : named) out.push_back(name);
  return out;
}

std::vector<at::Tensor> tensors_of(const Reducer::NamedParameters& named) {
  std::vector<at::Tensor> out;
  for (const auto& [name, t] : named) out.push_back(t);
  return out;
}

bool deferred_step_check(const Options& options, const c10::Device& comm_device) {
  if (options.step_check() == Options::StepCheck::kAuto) return comm_device.is_cuda();
  return options.step_check() == Options::StepCheck::kDeferred;
}

} // namespace

Reducer::Impl::Impl(const NamedParameters& parameters, const NamedParameters& buffers,
                    std::shared_ptr<ProcessGroup> group, Options opts)
    : Impl(detail::ConstructionCheck::run(parameters, buffers, *group, std::move(opts)), group) {}

Reducer::Impl::Impl(detail::ConstructionCheck::Result checked, std::shared_ptr<ProcessGroup> group)
    : names(names_of(checked.trainable)),
      parameters(tensors_of(checked.trainable)),
      process_group(std::move(group)),
      options(std::move(checked.options)),
      timeline(!options.timeline_path().empty()),
      rank_(process_group->rank()),
      world_size_(process_group->size()),
      snapshot_(parameters),
      step_check_(process_group, deferred_step_check(options, process_group->device()), options.timeout(), stats,
                  options.skip_all_reduce_unused_params() ? detail::BucketSkip::words_for(parameters.size()) : 0),
      status_row_(process_group, parameters.size()),
      sparse_(parameters, names, options.expect_sparse_gradients(), rank_),
      buckets_(parameters, names, snapshot_.shapes(), sparse_.mask(), options, rank_, world_size_, stats),
      skip_(options.skip_all_reduce_unused_params(), parameters.size()),
      hook_runner_(process_group, rank_, process_group->device().is_cuda(), options.timeout()),
      recovery_({step_check_, buckets_, hook_runner_, status_row_, stats}, rank_, world_size_, options.timeout()),
      unused_(names, rank_, world_size_),
      autotune_(options.bucket_cap_autotune()),
      multi_fire_(parameters.size()) {
  const size_t n = parameters.size();
  marks_.marked.assign(n, 0);
  marks_.marked_early.assign(n, 0);
  marks_.local_used.assign(n, 0);
  marks_.reachable.assign(n, 0);
  marks_.unused.assign(n, 0);
  marks_.row.assign(n, 0);
  marks_.late.assign(n, 0);
  buckets_.set_settled(&multi_fire_.settled());
  step_check_.set_flags_reader([this](const StepCheck::PendingRead& read) { check_flags(read); });
  buckets_.build(detail::reverse_order(n));
}

Reducer::Impl::~Impl() {
  detail::ParameterRegistry::release(parameters, this);
  gradient_hooks_.remove();
  if (phase_ == Phase::kArmed) {
    detail::log(detail::LogLevel::kWarn, rank_,
                "the DistributedDataParallel wrapper (or ddp::Reducer) of step {} was destroyed after its forward "
                "and before its backward: that backward will not be reduced (each rank keeps its local gradients). "
                "Keep the wrapper alive until backward() returns.",
                step_check_.step());
  }
  // Every deferred result is read (bounded: a collective that hangs is aborted by the
  // group's watchdog): a failure in the last steps is at least reported, and no goodbye is
  // sent into a group that is out of step. Reducer::synchronize() raises it instead.
  if (step_check_.deferred() && !step_check_.broken()) {
    try {
      step_check_.drain(/*block=*/true);
    } catch (const std::exception& e) {
      detail::log(detail::LogLevel::kError, rank_,
                  "the last training steps did not complete correctly (found when the reducer was destroyed; call "
                  "Reducer::synchronize() before saving a checkpoint to get this as an exception): {}",
                  e.what());
    }
  }
  // A backward that raised and was never followed by another forward: complete its
  // section (without waiting, except for a hook's futures, whose continuations issue
  // collectives) so that the peers' collectives still pair up.
  if (world_size_ > 1 && !step_check_.broken() && phase_ == Phase::kBackward && step_check_.verified()) {
    try {
      recovery_.complete_section([this](size_t b) { return launch_bucket(b); }, iteration_);
      // The peers' finalize gathers the sparse gradients after the status exchange.
      if (sparse_.any()) exchange_sparse(/*contribute=*/false);
      phase_ = Phase::kIdle;
    } catch (const std::exception& e) {
      detail::log(detail::LogLevel::kWarn, rank_, "could not complete the interrupted backward: {}", e.what());
    }
  }
  // Goodbye: a peer still training waits on a section header; this one tells it that this
  // rank has finished, instead of leaving it to time out.
  if (world_size_ > 1 && !step_check_.broken() && phase_ != Phase::kBackward) {
    try {
      step_check_.say_goodbye();
    } catch (const std::exception& e) {
      detail::log(detail::LogLevel::kWarn, rank_, "could not tell the other ranks that this one finished: {}",
                  e.what());
    }
  }
  if (timeline.enabled() && !options.timeline_path().empty()) {
    try {
      write_timeline(options.timeline_path());
    } catch (const std::exception& e) {
      detail::log(detail::LogLevel::kError, rank_, "{}", e.what());
    }
  }
}

void Reducer::Impl::register_hooks() {
  // Raw `this` is safe: the destructor removes the hooks before the Impl goes away.
  gradient_hooks_.install(parameters, names, [this](size_t i, const at::Tensor& incoming) { on_gradient_ready(i, incoming); });
  detail::ParameterRegistry::claim(parameters, this);
}

std::string Reducer::Impl::rank_prefix() const {
  return fmt::format("[ddp rank {}]", rank_);
}

void Reducer::Impl::settle_reads() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (step_check_.deferred() && !step_check_.broken()) step_check_.drain(/*block=*/true);
}

void Reducer::Impl::reset_iteration() {
  std::fill(marks_.marked.begin(), marks_.marked.end(), 0);
  std::fill(marks_.marked_early.begin(), marks_.marked_early.end(), 0);
  buckets_.reset();
  sparse_.reset();
  skip_.reset();
  hook_runner_.reset(buckets_.size());
  finalize_tasks_.clear();
  last_task_ = kNoTask;
  multi_fire_.reset();
  late_anywhere_ = false;
  pending_error_.clear();
  step_check_.reset_section();
  status_row_.work().reset();
  recovery_.clear();
}

void Reducer::Impl::forget_unfinished_forward() {
  // A forward without a backward (evaluation with grad enabled): nothing was launched.
  if (phase_ == Phase::kArmed || phase_ == Phase::kArmedNoSync) reset_iteration();
}

void Reducer::Impl::settle_interrupted_backward(std::unique_lock<std::mutex>& lock) {
  recovery_.settle(
      [this](size_t b) { return launch_bucket(b); }, iteration_, lock,
      [this] {
        reset_iteration();
        phase_ = Phase::kIdle;
        // The other ranks finalised this iteration (with this rank's error: no choice is made
        // in it), so autotune's next cap follows the count here too.
        if (const auto cap = autotune_.cap_after(iteration_)) buckets_.set_bucket_cap(*cap);
        iteration_ += 1;
      },
      // What the peers' finalize issues after the status exchange: the sparse gradients'.
      [this] {
        if (sparse_.any()) exchange_sparse(/*contribute=*/false);
      });
}

void Reducer::Impl::prepare_for_forward() {
  std::unique_lock<std::mutex> lock(mutex_);
  step_check_.throw_if_broken();
  // On a CPU group (the deferred check runs there only when asked for) the previous
  // backward's flags are read now: the host already waited for its buckets, so this is one
  // small collective at most, and an MPI collective that a failed peer never joins could
  // not be ended. On CUDA only what has arrived; a group left hanging is aborted.
  if (step_check_.deferred()) step_check_.drain(/*block=*/!process_group->device().is_cuda());
  if (phase_ == Phase::kBackward) settle_interrupted_backward(lock);
  const auto check_start = Clock::now();
  module_watch.full_check_this_forward = check_due_ || step_check_.step() % kFullCheckEvery == 0;
  check_due_ = false;
  if (module_watch.full_check_this_forward) snapshot_.check_unchanged(parameters, names, rank_);
  stats.step_check_ns += detail::nanoseconds_since(check_start);
  forget_unfinished_forward();
  phase_ = Phase::kIdle;
  extra_backward_ = false;
  if (join_.armed() && world_size_ > 1) {
    const auto tally = detail::JoinState::tally(step_check_.exchange_join(/*active=*/true, require_sync));
    join_.set_authoritative_rank(tally.authoritative); // this rank is active: there is one
    if (!tally.joined.empty() && join_.throws_on_early_termination()) {
      join_.terminate();
      buckets_.set_divisor(world_size_);
      throw ReductionError(
          detail::JoinState::early_termination_on_active(rank_prefix(), tally.joined, step_check_.step() + 1));
    }
    buckets_.set_divisor(join_.divisor(tally.active, world_size_));
  }
  step_check_.count_step();
  buckets_.rebuild_if_due();
}

void Reducer::Impl::arm_join(bool throw_on_early_termination, bool divide_by_initial_world_size) {
  std::lock_guard<std::mutex> lock(mutex_);
  step_check_.throw_if_broken();
  if (!reduced_owner_.expired()) {
    throw InvalidArgumentError(fmt::format(
        "{} ddp::Join with an overlapped optimizer (ddp::OverlappedOptimizer): a joined rank shadows the "
        "active ranks' collectives but takes no step of its own, so its parameters would drift from theirs; "
        "step a plain torch::optim optimizer after backward() while Join is in use",
        rank_prefix()));
  }
  join_.arm(throw_on_early_termination, divide_by_initial_world_size);
}

void Reducer::Impl::set_reduced_callback(std::weak_ptr<void> owner, ReducedCallback callback) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (callback && !reduced_owner_.expired()) {
    throw InvalidArgumentError(fmt::format(
        "{} this model already has an overlapped optimizer: attach one optimizer per model (give it several "
        "parameter groups) or destroy the first OverlappedOptimizer before attaching another",
        rank_prefix()));
  }
  if (callback && join_.armed()) {
    throw InvalidArgumentError(fmt::format(
        "{} an overlapped optimizer attached while ddp::Join is armed: a joined rank takes no step of its own; "
        "attach it outside the Join scope, or step a plain torch::optim optimizer after backward()",
        rank_prefix()));
  }
  if (phase_ == Phase::kBackward) {
    throw InvalidArgumentError(
        fmt::format("{} the reduced callback changed during a backward pass; change it between steps", rank_prefix()));
  }
  reduced_owner_ = callback ? std::move(owner) : std::weak_ptr<void>();
  reduced_callback_ = std::move(callback);
}

void Reducer::Impl::disarm_join() {
  std::lock_guard<std::mutex> lock(mutex_);
  join_.disarm();
  buckets_.set_divisor(world_size_);
}

void Reducer::Impl::join(const std::function<std::vector<at::Tensor>()>& buffers,
                         const std::vector<at::Tensor>& final_state) {
  std::unique_lock<std::mutex> lock(mutex_);
  step_check_.throw_if_broken();
  if (!join_.armed()) {
    // Every rank already raised the early termination: there is nothing left to join.
    if (join_.terminated()) return;
    throw ReductionError(fmt::format("{} join() without an enabled ddp::Join on this reducer", rank_prefix()));
  }
  if (world_size_ == 1) {
    join_.disarm();
    return;
  }
  if (phase_ == Phase::kBackward) settle_interrupted_backward(lock);
  forget_unfinished_forward();
  if (step_check_.deferred()) step_check_.drain(/*block=*/true);
  // Shadow the active ranks, one of their training steps per round: the same sections,
  // headers included (the same step and broadcast counts), the buckets with zeros and
  // "used nothing" flags, so that their collectives pair up and nothing of this rank
  // enters their averages.
  for (;;) {
    const auto tally = detail::JoinState::tally(step_check_.exchange_join(/*active=*/false, /*reduces=*/false));
    if (tally.active == 0) break;
    join_.set_authoritative_rank(tally.authoritative);
    if (join_.throws_on_early_termination()) {
      join_.terminate();
      buckets_.set_divisor(world_size_);
      throw ReductionError(
          detail::JoinState::early_termination_on_joined(rank_prefix(), tally.active, step_check_.step() + 1));
    }
    // What the active ranks' prepare_for_forward does. The divisor too: an ordered sum
    // (Options::reproducible) divides each chunk on the rank that owns it, this one included.
    buckets_.set_divisor(join_.divisor(tally.active, world_size_));
    phase_ = Phase::kIdle;
    extra_backward_ = false;
    step_check_.count_step();
    buckets_.rebuild_if_due();
    if (options.broadcast_buffers()) {
      std::vector<at::Tensor> tensors = buffers();
      if (!tensors.empty()) {
        step_check_.exchange(StepCheck::Section::kModuleState);
        step_check_.count_state_sync();
        lock.unlock(); // the broadcast waits on the network
        broadcast_coalesced(*process_group, tensors, join_.authoritative_rank());
        lock.lock();
      }
    }
    if (!tally.reduces) continue; // a no_sync() step on the active ranks
    phase_ = Phase::kArmed;
    join_.set_shadowing(true); // before the header: a shadow uses no parameter (BucketSkip)
    try {
      begin_backward(Clock::now(), /*queue_finalize=*/false);
    } catch (...) {
      join_.set_shadowing(false);
      throw;
    }
    lock.unlock(); // finalize takes the lock itself
    try {
      finalize(); // every slot zero: this rank used no parameter
    } catch (...) {
      lock.lock();
      join_.set_shadowing(false);
      throw;
    }
    lock.lock();
    join_.set_shadowing(false);
  }
  // Every rank has joined: all take the last active rank's parameters and buffers, so that
  // they leave in the same state (a joined rank did not step its optimizer meanwhile).
  join_.disarm();
  buckets_.set_divisor(world_size_);
  const int root = join_.authoritative_rank();
  lock.unlock(); // the broadcast waits on the network
  broadcast_coalesced(*process_group, final_state, root);
}

void Reducer::Impl::register_comm_hook(std::shared_ptr<CommHook> hook) {
  std::unique_lock<std::mutex> lock(mutex_);
  step_check_.throw_if_broken();
  if (!hook) {
    throw InvalidArgumentError(fmt::format(
        "{} register_comm_hook: the hook is null; pass one of ddp::hooks (e.g. ddp::hooks::fp16_compress()) or a "
        "ddp::CommHook of your own",
        rank_prefix()));
  }
  const std::string name = hook->name();
  if (options.wire_dtype() || !options.wire_dtype_overrides().empty()) {
    // Both choose what goes on the wire. The options are equal on every rank (checked at
    // construction), so every rank throws here, before any collective.
    throw InvalidArgumentError(fmt::format(
        "{} register_comm_hook('{}'): Options::wire_dtype / wire_dtype_overrides already choose what the gradients "
        "travel as, and a hook replaces that reduction. Use one: unset wire_dtype, or do not register the hook.",
        rank_prefix(), name));
  }
  if (options.bucket_cap_autotune()) {
    // A hook may keep state per bucket (PowerSGD's error feedback), which each of
    // autotune's rebuilds would scramble, and its cost is not what the candidates were
    // timed with. The options are equal on every rank: every rank throws here.
    throw InvalidArgumentError(fmt::format(
        "{} register_comm_hook('{}'): Options::bucket_cap_autotune is set, and its rebuilds change the buckets a "
        "hook is handed while it tunes. Use one: unset bucket_cap_autotune (set the cap it chose as bucket_cap_mb), "
        "or do not register the hook.",
        rank_prefix(), name));
  }
  if (hook_runner_.active()) {
    throw InvalidArgumentError(fmt::format(
        "{} register_comm_hook('{}'): communication hook '{}' is already registered. Register one hook, once, before "
        "the first forward (to combine two, wrap one in the other, as ddp::hooks::compress(inner, dtype) does).",
        rank_prefix(), name, hook_runner_.name()));
  }
  if (step_check_.step() > 0 || iteration_ > 0 || phase_ != Phase::kIdle) {
    throw InvalidArgumentError(fmt::format(
        "{} register_comm_hook('{}') after training step {} started: register the hook before the first forward, "
        "on every rank, as in PyTorch (the buckets of a step already begun were reduced without it).",
        rank_prefix(), name, step_check_.step()));
  }
  if (world_size_ > 1) {
    if (step_check_.deferred()) step_check_.drain(/*block=*/true);
    // Shaped like a section header, so that a rank that does not register (and goes on
    // to its first forward's header) is named instead of pairing with something else.
    const auto records = step_check_.gather_record(StepCheck::Section::kCommHook, step_check_.state_syncs());
    step_check_.check_records(records.data());
    // Every rank is here: compare the hooks' names (ModelMismatchError naming each).
    try {
      detail::verify_consistent(*process_group, {{detail::ConsistencyItem::Kind::kOption, "comm_hook", name}});
    } catch (const ModelMismatchError& e) {
      throw ModelMismatchError(fmt::format(
          "{} the ranks registered different communication hooks; register the same hook, with the same options, on "
          "every rank. {}",
          rank_prefix(), e.what()));
    }
    stats.collectives += 1;
  }
  hook_runner_.install(std::move(hook), options.reproducible());
  buckets_.divide_before_reduction(); // hooks are handed pre-divided buckets
}

void Reducer::Impl::sync_module_state(const std::vector<at::Tensor>& tensors) {
  std::unique_lock<std::mutex> lock(mutex_);
  step_check_.throw_if_broken();
  if (world_size_ == 1 || tensors.empty()) return;
  if (phase_ == Phase::kBackward) settle_interrupted_backward(lock);
  // A forward under NoGradGuard between a training forward and its backward keeps the
  // buffers as they are: the pending backward may have saved them (BatchNorm saves its
  // running statistics), and overwriting them in place would break it. The next training
  // forward broadcasts them.
  if (!at::GradMode::is_enabled() && (phase_ == Phase::kArmed || phase_ == Phase::kArmedNoSync)) return;
  if (step_check_.deferred()) step_check_.drain(/*block=*/!process_group->device().is_cuda());
  step_check_.exchange(StepCheck::Section::kModuleState);
  step_check_.count_state_sync();
  const int root = join_.authoritative_rank(); // 0, or the last active rank under ddp::Join
  lock.unlock(); // the broadcast waits on the network
  broadcast_coalesced(*process_group, tensors, root);
}

void Reducer::Impl::prepare_for_backward(const std::vector<at::Tensor>& outputs) {
  std::lock_guard<std::mutex> lock(mutex_);
  step_check_.throw_if_broken();
  if (phase_ == Phase::kBackward) {
    throw ReductionError(fmt::format(
        "{} prepare_for_backward() was called while a backward pass is still being reduced; call it once after "
        "each forward, before backward()",
        rank_prefix()));
  }
  if (phase_ == Phase::kArmed) reset_iteration(); // prepared twice: start over
  // Finalize must run on this rank even if no parameter gets a gradient; a backward that
  // reaches these outputs again after finalize is a second backward (named as such).
  for (const at::Tensor& out : outputs) {
    if (out.defined() && out.requires_grad() && out.grad_fn()) {
      out.grad_fn()->add_pre_hook(std::make_unique<BackwardStartHook>(weak_from_this()));
    }
  }
  if (!require_sync) {
    phase_ = Phase::kArmedNoSync;
    return;
  }
  phase_ = Phase::kArmed;
  // Parameters known now to get no gradient are only flagged here; the first hook of the
  // backward fills their slots (begin_backward). Filling them here would queue the zeros
  // on this thread's stream, while a bucket launch waits only on the launching hook's
  // stream: on CUDA, with a forward on another stream than the backward's, the
  // collective could read the slots before the zeros land. Their buckets launch at the
  // first hook too, once backward has really started: a forward that is never
  // backpropagated must not leave collectives behind.
  if (options.static_graph() && static_graph_.learned) {
    for (size_t i = 0; i < parameters.size(); ++i) {
      if (!static_graph_.local_used[i]) marks_.marked_early[i] = 1;
    }
  } else if (options.find_unused_parameters()) {
    const auto start = Clock::now();
    stats.graph_walk_nodes = static_cast<int64_t>(gradient_hooks_.walk(outputs, marks_.reachable));
    for (size_t i = 0; i < parameters.size(); ++i) {
      if (!marks_.reachable[i]) marks_.marked_early[i] = 1;
    }
    stats.graph_walk_ns += detail::nanoseconds_since(start);
  }
}

void Reducer::Impl::queue_finalize() {
  // A callback on every graph task a hook runs in: a reentrant backward inside this one is
  // a graph task of its own, which ends first (on_graph_task_end tells them apart).
  const int task = torch::autograd::get_current_graph_task_id();
  if (task == last_task_) return;
  last_task_ = task;
  if (std::find(finalize_tasks_.begin(), finalize_tasks_.end(), task) != finalize_tasks_.end()) return;
  finalize_tasks_.push_back(task);
  std::weak_ptr<Impl> self = weak_from_this();
  torch::autograd::Engine::get_default_engine().queue_callback([self, task] {
    if (auto impl = self.lock()) impl->on_graph_task_end(task);
  });
}

void Reducer::Impl::on_graph_task_end(int task) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (phase_ != Phase::kBackward) return; // stale, or finalized by the outermost task already
    finalize_tasks_.erase(std::remove(finalize_tasks_.begin(), finalize_tasks_.end(), task), finalize_tasks_.end());
    last_task_ = kNoTask;
    // A graph task's final callbacks run after its last node, outside any node of its own:
    // a node still evaluating on this thread is the enclosing task's, whose node called
    // this backward. The reduction ends with the outermost task.
    if (const auto enclosing = torch::autograd::get_current_node()) {
      if (!finalize_tasks_.empty()) return; // the enclosing task's callback finalizes
      // None queued there yet (every hook so far ran in nested tasks): the enclosing node's
      // next nodes run in the enclosing task, and the first of them queues it.
      bool requeued = false;
      for (const auto& edge : enclosing->next_edges()) {
        if (!edge.function) continue;
        edge.function->add_pre_hook(std::make_unique<RequeueFinalizeHook>(weak_from_this(), iteration_));
        requeued = true;
      }
      if (requeued) return;
      // Nothing of the enclosing task is known to run after this: finalize now, as a
      // backward without nesting would.
    }
  }
  finalize();
}

void Reducer::Impl::requeue_finalize(int64_t iteration) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (phase_ != Phase::kBackward || iteration != iteration_ || !finalize_tasks_.empty()) return;
  queue_finalize();
}

void Reducer::Impl::begin_backward(Clock::time_point start, bool queue) {
  phase_ = Phase::kBackward;
  backward_start_ = start;
  recovery_.clear();
  // The slots prepare_for_backward flagged, filled on this (the backward's) thread and
  // stream, before any bucket of this section can launch.
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (marks_.marked_early[i] && !marks_.marked[i]) mark_without_hook(i);
  }
  // What this rank knows it leaves without a gradient travels in the header: the
  // parameters flagged above (a Join shadow: all), less those with a gradient accumulated
  // under no_sync(), which still contribute it (fill_without_hook).
  const int64_t* unused_bitmap = nullptr;
  if (skip_.enabled()) {
    const bool shadow = join_.shadowing();
    for (size_t i = 0; i < parameters.size(); ++i) {
      marks_.unused[i] = (shadow || marks_.marked_early[i]) && !marks_.local_used[i];
    }
    unused_bitmap = skip_.set_local(marks_.unused);
  }
  // Issued now, checked before the first bucket launches (launch_ready_buckets): the
  // exchange runs on the communication thread while the backward computes, and nothing of
  // this section is launched before every rank is known to be at the same step.
  step_check_.exchange(StepCheck::Section::kReduction, /*wait=*/false, unused_bitmap);
  if (queue) queue_finalize();
}

void Reducer::Impl::verify_reduction_header() {
  if (step_check_.verified() || !step_check_.issued()) return;
  try {
    step_check_.verify();
  } catch (const TimeoutError&) {
    recovery_.set_cause("the other ranks did not start the same backward within the timeout");
    throw;
  }
}

void Reducer::Impl::record_error(std::string message) {
  if (pending_error_.empty()) pending_error_ = std::move(message);
}

void Reducer::Impl::record_hook_failure(size_t b, int64_t iteration, const std::string& what) {
  // The status names the hook only when its failure is the error this rank reports.
  if (pending_error_.empty()) hook_runner_.set_failed_bucket(b);
  record_error(hook_runner_.failure_message(rank_prefix(), buckets_, b, iteration, what));
}

void Reducer::Impl::write_timeline(const std::string& path) const {
  timeline.write_chrome_trace(timeline_path_for(path, rank_), rank_, names, origin_);
}

} // namespace ddp
