#include "reducer/reducer_impl.h"

#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>

#include <algorithm>
#include <cstdlib>
#include <unordered_set>

#include <ddp/collectives.h>
#include <ddp/error.h>

#include "bucket/bucket_assignment.h"
#include "bucket/slot_copy.h"
#include "common/check.h"
#include "common/logging.h"

namespace ddp {
namespace {

constexpr size_t kMaxReportedSets = 64;

size_t mib_to_bytes(double mib) {
  return static_cast<size_t>(mib * 1024.0 * 1024.0);
}

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

std::string timeline_path_for(const std::string& path, int rank) {
  const auto slash = path.find_last_of('/');
  const auto dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) {
    return fmt::format("{}.rank{}", path, rank);
  }
  return fmt::format("{}.rank{}{}", path.substr(0, dot), rank, path.substr(dot));
}

Reducer::NamedParameters validated(Reducer::NamedParameters parameters, int rank) {
  Reducer::NamedParameters kept;
  std::unordered_set<const void*> seen_tensors;
  std::unordered_set<std::string> seen_names;
  for (auto& [name, tensor] : parameters) {
    if (!tensor.defined()) {
      throw InvalidArgumentError(fmt::format("[ddp rank {}] parameter '{}' is an undefined tensor", rank, name));
    }
    if (!tensor.requires_grad()) continue; // frozen: nothing to reduce
    if (!tensor.is_leaf()) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] parameter '{}' is not a leaf tensor (it has a grad_fn), so it has no gradient "
          "accumulator to hook; pass the parameter itself, not a result computed from it",
          rank, name));
    }
    if (tensor.is_sparse() || tensor.layout() != c10::kStrided) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] parameter '{}' has a non-strided layout; libddp reduces dense parameters only", rank, name));
    }
    if (!seen_tensors.insert(tensor.unsafeGetTensorImpl()).second) continue; // shared: reduce once
    if (!seen_names.insert(name).second) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] two different parameters are named '{}'; names identify parameters in errors and across "
          "ranks, so they must be unique",
          rank, name));
    }
    if (!kept.empty() && tensor.device() != kept.front().second.device()) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] parameter '{}' is on {} but '{}' is on {}; one process drives one device: move the whole "
          "module to one device (module->to(device)) before wrapping it",
          rank, name, tensor.device().str(), kept.front().first, kept.front().second.device().str()));
    }
    kept.emplace_back(name, tensor);
  }
  if (kept.empty()) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] no parameter requires grad, so there is nothing to reduce: check that the module has "
        "parameters and that they are not all frozen (requires_grad=false)",
        rank));
  }
  return kept;
}

std::vector<std::string> parameter_names_of(const Reducer::NamedParameters& named) {
  std::vector<std::string> out;
  for (const auto& [name, t] : named) out.push_back(name);
  return out;
}

std::vector<at::Tensor> tensors_of(const Reducer::NamedParameters& named) {
  std::vector<at::Tensor> out;
  for (const auto& [name, t] : named) out.push_back(t);
  return out;
}

Options validated(Options options, int rank) {
  auto bad = [rank](const char* field, double value, const char* rule) {
    return InvalidArgumentError(
        fmt::format("[ddp rank {}] Options::{} = {} is invalid: it must be {}", rank, field, value, rule));
  };
  if (!(options.bucket_cap_mb > 0)) throw bad("bucket_cap_mb", options.bucket_cap_mb, "> 0 (MiB)");
  if (!(options.first_bucket_cap_mb > 0)) throw bad("first_bucket_cap_mb", options.first_bucket_cap_mb, "> 0 (MiB)");
  if (options.timeout.count() <= 0) {
    throw bad("timeout", static_cast<double>(options.timeout.count()), "> 0 milliseconds");
  }
  // DDP_TIMEOUT_S replaces the default; a timeout set in the code wins over it.
  if (const char* s = std::getenv("DDP_TIMEOUT_S"); s != nullptr && options.timeout == Options{}.timeout) {
    const double seconds = std::atof(s);
    if (seconds > 0) options.timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  }
  if (const char* s = std::getenv("DDP_TIMELINE")) {
    if (*s != '\0') options.timeline_path = s;
  }
  return options;
}

} // namespace

Reducer::Impl::Impl(NamedParameters parameters, std::shared_ptr<ProcessGroup> group, Options opts)
    : names(parameter_names_of(parameters = validated(std::move(parameters), group->rank()))),
      parameters(tensors_of(parameters)),
      process_group(std::move(group)),
      options(validated(std::move(opts), process_group->rank())),
      timeline(!options.timeline_path.empty()),
      rank_(process_group->rank()),
      world_size_(process_group->size()) {
  verify_same_tensors(*process_group, parameters, "parameter");
  const size_t n = this->parameters.size();
  marked_.assign(n, 0);
  marked_early_.assign(n, 0);
  local_used_.assign(n, 0);
  reachable_.assign(n, 0);
  last_used_by_.assign(n, world_size_);
  last_local_used_.assign(n, 1);
  scale_ = at::scalar_tensor(1.0 / world_size_, at::TensorOptions().dtype(at::kDouble));
  const auto device = this->parameters.front().device();
  used_local_ = at::zeros({static_cast<int64_t>(n)}, at::TensorOptions().dtype(at::kByte).device(device));
  used_all_ = at::zeros({world_size_, static_cast<int64_t>(n)}, used_local_.options());
  for (int r = 0; r < world_size_; ++r) used_all_rows_.push_back(used_all_[r]);
  // Host mirrors, the same tensors on CPU: finalize allocates nothing per iteration.
  used_local_host_ = device.is_cpu() ? used_local_ : at::zeros_like(used_local_, at::kCPU);
  used_all_host_ = device.is_cpu() ? used_all_ : at::zeros_like(used_all_, at::kCPU);
  build_buckets(detail::reverse_order(n));
}

Reducer::Impl::~Impl() {
  for (size_t i = 0; i < accumulators_.size() && i < hook_keys_.size(); ++i) {
    accumulators_[i]->del_post_hook(hook_keys_[i]);
  }
  if (timeline.enabled() && !options.timeline_path.empty()) {
    try {
      write_timeline(options.timeline_path);
    } catch (const std::exception& e) {
      detail::log(detail::LogLevel::kError, rank_, "{}", e.what());
    }
  }
}

void Reducer::Impl::register_hooks() {
  std::vector<torch::autograd::Node*> nodes;
  for (size_t i = 0; i < parameters.size(); ++i) {
    auto accumulator = torch::autograd::impl::grad_accumulator(parameters[i]);
    DDP_CHECK(accumulator != nullptr, "parameter '{}' has no gradient accumulator", names[i]);
    // Raw `this` is safe: the destructor removes the hook before the Impl goes away.
    hook_keys_.push_back(accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [this, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          on_gradient_ready(i);
          return outputs;
        })));
    nodes.push_back(accumulator.get());
    accumulators_.push_back(std::move(accumulator));
  }
  walker_ = std::make_unique<detail::GraphWalker>(nodes);
}

std::string Reducer::Impl::rank_prefix() const {
  return fmt::format("[ddp rank {}]", rank_);
}

size_t Reducer::Impl::in_place_min_bytes() const {
  if (options.gradient_as_bucket_view) return 0; // .grad is the bucket already
  if (options.in_place_min_mb < 0) {
    return parameters.front().device().is_cpu() ? mib_to_bytes(1.0) : 0;
  }
  return mib_to_bytes(options.in_place_min_mb);
}

std::chrono::milliseconds Reducer::Impl::timeout() const {
  return options.timeout;
}

void Reducer::Impl::build_buckets(const std::vector<size_t>& order) {
  auto assignment = detail::assign_buckets(
      parameters, order,
      {mib_to_bytes(options.first_bucket_cap_mb), mib_to_bytes(options.bucket_cap_mb), in_place_min_bytes()});
  std::vector<std::unique_ptr<detail::Bucket>> buckets;
  std::vector<Slot> slots(parameters.size());
  int64_t bytes = 0;
  for (size_t b = 0; b < assignment.size(); ++b) {
    for (size_t k = 0; k < assignment[b].size(); ++k) slots[assignment[b][k]] = Slot{b, k};
    buckets.push_back(std::make_unique<detail::Bucket>(std::move(assignment[b]), parameters));
    bytes += static_cast<int64_t>(buckets.back()->bytes());
  }
  // gradient_as_bucket_view: move gradients that alias the old buckets into the new ones.
  if (options.gradient_as_bucket_view && !buckets_.empty()) {
    for (size_t i = 0; i < parameters.size(); ++i) {
      at::Tensor& grad = const_cast<at::Tensor&>(parameters[i]).mutable_grad();
      const Slot& old_slot = slots_[i];
      if (grad.defined() && grad.is_alias_of(buckets_[old_slot.bucket]->flat())) {
        const at::Tensor& view = buckets[slots[i].bucket]->view(slots[i].position);
        view.copy_(grad);
        grad = view;
      }
    }
  }
  buckets_ = std::move(buckets);
  slots_ = std::move(slots);
  next_to_launch_ = 0;
  stats.buckets = static_cast<int64_t>(buckets_.size());
  stats.bytes_per_iteration = bytes;
  if (detail::debug_level() >= detail::DebugLevel::kInfo && rank_ == 0) {
    std::string layout;
    for (size_t b = 0; b < buckets_.size(); ++b) {
      layout += fmt::format("\n  bucket {} ({:.2f} MiB): {}", b, buckets_[b]->bytes() / 1048576.0,
                            names_of(buckets_[b]->members()));
    }
    detail::log(detail::LogLevel::kInfo, rank_, "bucket layout{}:{}", rebuilt_ ? " after rebuild" : "", layout);
  }
}

std::string Reducer::Impl::names_of(const std::vector<size_t>& indices) const {
  std::string out;
  for (size_t k = 0; k < indices.size(); ++k) {
    if (k) out += ", ";
    out += names[indices[k]];
  }
  return out;
}

void Reducer::Impl::rebuild_buckets_if_due() {
  if (rebuilt_ || iteration_ < 1 || ready_order_.size() != parameters.size()) return;
  // Every rank builds the same buckets from rank 0's observed order.
  at::Tensor order = at::empty({static_cast<int64_t>(parameters.size())}, at::kLong);
  auto* data = order.data_ptr<int64_t>();
  for (size_t k = 0; k < ready_order_.size(); ++k) data[k] = static_cast<int64_t>(ready_order_[k]);
  if (world_size_ > 1) {
    at::Tensor on_device = order.to(used_local_.device());
    process_group->broadcast(on_device, 0)->wait(timeout());
    order.copy_(on_device);
  }
  std::vector<size_t> observed(parameters.size());
  for (size_t k = 0; k < observed.size(); ++k) observed[k] = static_cast<size_t>(data[k]);
  rebuilt_ = true;
  stats.bucket_rebuilds += 1;
  build_buckets(observed);
}

void Reducer::Impl::prepare_for_forward() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (phase_ == Phase::kBackward) {
    // The previous backward raised before finalize ran. Drain what it launched so the
    // buffers are free again, then tell the user.
    const int64_t iteration = iteration_;
    std::vector<std::shared_ptr<Work>> launched;
    for (auto& b : buckets_) {
      if (b->work()) launched.push_back(b->work());
    }
    reset_iteration();
    lock.unlock();
    for (auto& w : launched) {
      try {
        w->wait(timeout());
      } catch (...) {
      }
    }
    throw ReductionError(fmt::format(
        "{} the backward pass of iteration {} did not finish (an exception was raised during backward?), so its "
        "gradients were not reduced. The reducer has been reset; if every rank failed the same way, training can "
        "go on, otherwise the ranks' collectives no longer match.",
        rank_prefix(), iteration));
  }
  if (phase_ == Phase::kArmed || phase_ == Phase::kArmedNoSync) {
    // A forward without a backward (evaluation with grad enabled): nothing was launched.
    reset_iteration();
  }
  phase_ = Phase::kIdle;
  if (require_sync) rebuild_buckets_if_due();
}

void Reducer::Impl::prepare_for_backward(const std::vector<at::Tensor>& outputs) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (phase_ == Phase::kBackward) {
    throw ReductionError(fmt::format(
        "{} prepare_for_backward() was called while a backward pass is still being reduced; call it once after "
        "each forward, before backward()",
        rank_prefix()));
  }
  if (phase_ == Phase::kArmed) reset_iteration(); // prepared twice: start over
  if (!require_sync) {
    phase_ = Phase::kArmedNoSync;
    return;
  }
  phase_ = Phase::kArmed;
  // Finalize must run on this rank even if no parameter gets a gradient.
  for (const at::Tensor& out : outputs) {
    if (out.defined() && out.requires_grad() && out.grad_fn()) {
      out.grad_fn()->add_pre_hook(std::make_unique<BackwardStartHook>(weak_from_this()));
    }
  }
  if (options.static_graph && learned_static_) {
    for (size_t i = 0; i < parameters.size(); ++i) {
      if (!static_local_used_[i]) {
        mark_without_hook(i);
        marked_early_[i] = 1;
      }
    }
  } else if (options.find_unused_parameters) {
    const auto start = Clock::now();
    stats.graph_walk_nodes = static_cast<int64_t>(walker_->walk(outputs, reachable_));
    for (size_t i = 0; i < parameters.size(); ++i) {
      if (!reachable_[i]) {
        mark_without_hook(i);
        marked_early_[i] = 1;
      }
    }
    stats.graph_walk_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  }
  // Buckets made ready here launch at the first hook, once backward has really started:
  // a forward that is never backpropagated must not leave collectives behind.
}

void Reducer::Impl::queue_finalize() {
  if (finalize_queued_) return;
  finalize_queued_ = true;
  std::weak_ptr<Impl> self = weak_from_this();
  torch::autograd::Engine::get_default_engine().queue_callback([self] {
    if (auto impl = self.lock()) impl->finalize();
  });
}

void Reducer::Impl::on_backward_start() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (phase_ != Phase::kArmed) return;
  phase_ = Phase::kBackward;
  backward_start_ = Clock::now();
  queue_finalize();
  launch_ready_buckets();
}

void Reducer::Impl::on_gradient_ready(size_t index) {
  const auto start = Clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  switch (phase_) {
    case Phase::kArmedNoSync:
      local_used_[index] = 1;
      return;
    case Phase::kIdle:
      throw ReductionError(fmt::format(
          "{} parameter '{}' received a gradient, but the reducer was not prepared for this backward. With "
          "ddp::Reducer directly, call prepare_for_forward() before and prepare_for_backward(outputs) after each "
          "forward. With DistributedDataParallel, run the forward through the wrapper (model(x), not "
          "model.module()->forward(x)).",
          rank_prefix(), names[index]));
    case Phase::kFinalized:
      throw ReductionError(fmt::format(
          "{} parameter '{}' received a gradient after this iteration's reduction finished (iteration {}): a "
          "second backward() after one forward, or a nested (reentrant) backward such as reentrant activation "
          "checkpointing, which ends the reduction early. Sum the losses and call backward() once, run the earlier "
          "backward passes under no_sync() so that only the last one reduces, or use non-reentrant checkpointing.",
          rank_prefix(), names[index], iteration_ - 1));
    case Phase::kArmed:
      phase_ = Phase::kBackward;
      backward_start_ = start;
      queue_finalize();
      break;
    case Phase::kBackward:
      break;
  }
  if (marked_[index]) {
    if (marked_early_[index] && options.static_graph && learned_static_) {
      record_error(fmt::format(
          "{} static_graph=true, but parameter '{}' received a gradient in iteration {} and none in the first "
          "iteration: the graph changed. Set Options::static_graph = false for models whose used parameters vary.",
          rank_prefix(), names[index], iteration_));
    } else if (marked_early_[index]) {
      record_error(fmt::format(
          "{} parameter '{}' received a gradient in iteration {}, but find_unused_parameters found it unreachable "
          "from the forward's outputs: the loss uses a tensor that the forward did not return (a member, a global). "
          "Return every tensor the loss uses from forward(), or set find_unused_parameters = false.",
          rank_prefix(), names[index], iteration_));
    } else {
      record_error(fmt::format(
          "{} parameter '{}' was marked ready twice in one backward pass (iteration {}): its gradient hook fired "
          "again. This happens with reentrant activation checkpointing and when the same parameter is used by two "
          "backward() calls on one graph; use non-reentrant checkpointing, or sum the losses and call backward() "
          "once.",
          rank_prefix(), names[index], iteration_));
    }
    return;
  }
  local_used_[index] = 1;
  copy_gradient_to_slot(index);
  marked_[index] = 1;
  if (iteration_ == 0) ready_order_.push_back(index);
  const Slot& slot = slots_[index];
  if (buckets_[slot.bucket]->mark_slot_ready() && timeline.enabled()) {
    const auto now = Clock::now();
    timeline.record(Timeline::Kind::kBucketReady, static_cast<int64_t>(slot.bucket), iteration_, now, now);
  }
  launch_ready_buckets();
  const auto end = Clock::now();
  stats.hook_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count();
  timeline.record(Timeline::Kind::kHook, static_cast<int64_t>(index), iteration_, start, end);
}

void Reducer::Impl::copy_gradient_to_slot(size_t index) {
  const at::Tensor& param = parameters[index];
  const at::Tensor& grad = param.grad();
  const Slot& slot = slots_[index];
  const at::Tensor& view = buckets_[slot.bucket]->view(slot.position);
  if (!grad.defined()) {
    view.zero_();
    return;
  }
  if (grad.is_sparse() || grad.scalar_type() != view.scalar_type() || grad.device() != view.device() ||
      grad.sizes() != view.sizes()) {
    record_error(fmt::format(
        "{} parameter '{}' got a gradient of {} {} on {} but the parameter is {} {} on {}; libddp reduces dense "
        "gradients of the parameter's own shape, dtype and device",
        rank_prefix(), names[index], grad.is_sparse() ? "sparse" : "dense", c10::toString(grad.scalar_type()),
        grad.device().str(), c10::toString(view.scalar_type()), c10::str(view.sizes()), view.device().str()));
    view.zero_();
    return;
  }
  detail::Bucket& bucket = *buckets_[slot.bucket];
  if (bucket.members().size() == 1 && bucket.bytes() >= in_place_min_bytes() && in_place_min_bytes() > 0 &&
      grad.is_contiguous() && !grad.requires_grad() && !grad.is_alias_of(view)) {
    // Reduce the gradient where it is: no copy in now, no copy back in finalize.
    at::Tensor& owned = const_cast<at::Tensor&>(grad);
    if (world_size_ > 1) owned.mul_(scale_);
    bucket.set_in_place(owned);
    return;
  }
  if (options.gradient_as_bucket_view && grad.is_alias_of(view)) {
    if (world_size_ > 1) view.mul_(scale_);
  } else {
    // Copy and pre-divide in one pass.
    detail::copy_scaled(view, grad, 1.0 / world_size_, scale_);
  }
}

void Reducer::Impl::mark_without_hook(size_t index) {
  if (local_used_[index] && parameters[index].grad().defined()) {
    copy_gradient_to_slot(index); // accumulated under no_sync() in an earlier micro-step
  } else {
    const Slot& slot = slots_[index];
    const_cast<at::Tensor&>(buckets_[slot.bucket]->view(slot.position)).zero_();
  }
  marked_[index] = 1;
  buckets_[slots_[index].bucket]->mark_slot_ready();
}

void Reducer::Impl::launch_ready_buckets() {
  // Launch strictly in bucket order, so every rank issues the same sequence.
  while (next_to_launch_ < buckets_.size() && buckets_[next_to_launch_]->ready()) {
    detail::Bucket& bucket = *buckets_[next_to_launch_];
    bucket.work() = process_group->allreduce(bucket.comm_tensor());
    stats.collectives += 1;
    ++next_to_launch_;
  }
}

void Reducer::Impl::record_error(std::string message) {
  if (pending_error_.empty()) pending_error_ = std::move(message);
}

void Reducer::Impl::reset_iteration() {
  std::fill(marked_.begin(), marked_.end(), 0);
  std::fill(marked_early_.begin(), marked_early_.end(), 0);
  for (auto& b : buckets_) b->reset();
  next_to_launch_ = 0;
  finalize_queued_ = false;
  pending_error_.clear();
}

void Reducer::Impl::finalize() {
  const auto start = Clock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  if (phase_ != Phase::kBackward) return; // a stale callback of an abandoned backward
  const int64_t iteration = iteration_;
  const size_t n = parameters.size();
  // Sweep: whatever got no gradient contributes zeros (or its no_sync accumulation).
  for (size_t i = 0; i < n; ++i) {
    if (!marked_[i]) mark_without_hook(i);
  }
  launch_ready_buckets();
  DDP_CHECK_EQ(next_to_launch_, buckets_.size());

  // This backward's use becomes the reported one; local_used_ starts over.
  last_local_used_.swap(local_used_);
  std::fill(local_used_.begin(), local_used_.end(), 0);
  const std::vector<char>& local_used = last_local_used_;
  const bool exchange_flags = !(options.static_graph && learned_static_);
  std::shared_ptr<Work> flags_work;
  if (exchange_flags && world_size_ > 1) {
    std::copy(local_used.begin(), local_used.end(), used_local_host_.data_ptr<uint8_t>());
    if (!used_local_.is_same(used_local_host_)) used_local_.copy_(used_local_host_);
    flags_work = process_group->allgather(used_all_rows_, used_local_);
    stats.collectives += 1;
  }
  lock.unlock();

  // Wait without holding the lock: no hook can fire now, and a collective must never
  // run under a lock.
  const auto wait_start = Clock::now();
  std::exception_ptr failure;
  try {
    for (size_t b = 0; b < buckets_.size(); ++b) {
      Work& work = *buckets_[b]->work();
      work.wait(timeout());
      timeline.record(Timeline::Kind::kCollective, static_cast<int64_t>(b), iteration, work.start_time(),
                      work.end_time());
    }
    if (flags_work) {
      flags_work->wait(timeout());
      timeline.record(Timeline::Kind::kUsedFlags, -1, iteration, flags_work->start_time(), flags_work->end_time());
    }
  } catch (...) {
    failure = std::current_exception();
  }
  const auto wait_end = Clock::now();

  lock.lock();
  if (failure) {
    reset_iteration();
    phase_ = Phase::kFinalized;
    std::rethrow_exception(failure);
  }
  std::vector<int64_t>& used_by = last_used_by_;
  if (!exchange_flags) {
    used_by = static_used_by_;
  } else if (world_size_ == 1) {
    for (size_t i = 0; i < n; ++i) used_by[i] = local_used[i];
  } else {
    if (!used_all_.is_same(used_all_host_)) used_all_host_.copy_(used_all_);
    const uint8_t* flags = used_all_host_.data_ptr<uint8_t>();
    std::fill(used_by.begin(), used_by.end(), 0);
    for (int r = 0; r < world_size_; ++r) {
      for (size_t i = 0; i < n; ++i) used_by[i] += flags[r * n + i];
    }
  }

  // Write the averages into .grad; a parameter no rank used keeps its .grad untouched.
  if (pending_error_.empty()) {
    for (size_t i = 0; i < n; ++i) {
      if (used_by[i] == 0) continue;
      const Slot& slot = slots_[i];
      if (buckets_[slot.bucket]->in_place()) continue; // .grad holds the average already
      const at::Tensor& view = buckets_[slot.bucket]->view(slot.position);
      at::Tensor& grad = const_cast<at::Tensor&>(parameters[i]).mutable_grad();
      if (options.gradient_as_bucket_view) {
        if (!grad.defined() || !grad.is_alias_of(view)) grad = view;
      } else if (grad.defined()) {
        detail::copy_scaled(grad, view, 1.0);
      } else {
        grad = view.clone();
      }
    }
  }

  // Learn from the first synchronised iteration.
  if (options.static_graph) {
    if (!learned_static_) {
      static_local_used_ = local_used;
      static_used_by_ = used_by;
      learned_static_ = true;
    } else {
      for (size_t i = 0; i < n; ++i) {
        if (static_local_used_[i] && !local_used[i]) {
          record_error(fmt::format(
              "{} static_graph=true, but parameter '{}' received no gradient in iteration {} though it did in the "
              "first iteration: the graph changed. Set Options::static_graph = false for models whose used "
              "parameters vary.",
              rank_prefix(), names[i], iteration));
          break;
        }
      }
    }
  }
  if (iteration == 0) {
    // Parameters that never fired go last, in reverse registration order.
    std::vector<char> seen(n, 0);
    for (size_t i : ready_order_) seen[i] = 1;
    for (size_t i = n; i-- > 0;) {
      if (!seen[i]) ready_order_.push_back(i);
    }
  }
  report_unused(used_by);

  const auto end = Clock::now();
  stats.iterations += 1;
  stats.finalize_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count();
  stats.finalize_wait_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(wait_end - wait_start).count();
  timeline.record(Timeline::Kind::kFinalizeWait, -1, iteration, wait_start, wait_end);
  timeline.record(Timeline::Kind::kFinalize, -1, iteration, start, end);
  timeline.record(Timeline::Kind::kBackward, -1, iteration, backward_start_, end);

  std::string error = std::move(pending_error_);
  reset_iteration();
  phase_ = Phase::kFinalized;
  iteration_ += 1;
  if (!error.empty()) throw ReductionError(error);
}

void Reducer::Impl::report_unused(const std::vector<int64_t>& used_by) {
  const size_t n = parameters.size();
  std::vector<size_t> global;
  std::vector<size_t> partial;
  for (size_t i = 0; i < n; ++i) {
    if (used_by[i] == 0) global.push_back(i);
    else if (used_by[i] < world_size_) partial.push_back(i);
  }
  std::vector<size_t> local;
  for (size_t i = 0; i < n; ++i) {
    if (!last_local_used_[i]) local.push_back(i);
  }
  if (detail::debug_level() >= detail::DebugLevel::kDetail) {
    detail::log(detail::LogLevel::kInfo, rank_, "iteration {}: unused on every rank: [{}]; unused on this rank: [{}]",
                iteration_, names_of(global), names_of(local));
  }
  if (global.empty() && partial.empty()) return;
  // Which ranks skipped each partially used parameter (the allgathered flags say).
  std::string partial_text;
  if (!partial.empty() && world_size_ > 1) {
    const auto* flags = used_all_host_.data_ptr<uint8_t>(); // filled by finalize
    for (size_t k = 0; k < partial.size(); ++k) {
      std::string ranks;
      for (int r = 0; r < world_size_; ++r) {
        if (!flags[r * n + partial[k]]) ranks += fmt::format("{}{}", ranks.empty() ? "" : ",", r);
      }
      partial_text += fmt::format("{}{} (ranks {})", k ? ", " : "", names[partial[k]], ranks);
    }
  }
  std::string key = names_of(global) + "|" + partial_text;
  if (reported_sets_.count(key) || reported_sets_.size() >= kMaxReportedSets) return;
  reported_sets_.insert(key);
  if (rank_ != 0) return; // every rank knows the same sets; one report is enough
  std::string message = fmt::format("iteration {}: parameters that received no gradient", iteration_);
  if (!global.empty()) message += fmt::format("; on every rank (their .grad is left untouched): {}", names_of(global));
  if (!partial.empty()) message += fmt::format("; on some ranks (they contributed zeros): {}", partial_text);
  message += ". The gradients are correct. ";
  if (!options.find_unused_parameters && !options.static_graph) {
    message += "For an earlier launch of their buckets set Options::find_unused_parameters = true. ";
  }
  message += "If they are never needed, remove them or freeze them (requires_grad_(false)); register non-trainable "
             "tensors as buffers. Reported once per new set";
  if (reported_sets_.size() == kMaxReportedSets) message += " (no more sets will be reported; DDP_DEBUG=DETAIL logs every iteration)";
  message += ".";
  detail::log(detail::LogLevel::kWarn, rank_, "{}", message);
}

std::vector<std::string> Reducer::Impl::unused_names(bool global) const {
  std::vector<std::string> out;
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (global ? last_used_by_[i] == 0 : !last_local_used_[i]) out.push_back(names[i]);
  }
  return out;
}

std::vector<std::vector<std::string>> Reducer::Impl::bucket_layout() const {
  std::vector<std::vector<std::string>> out;
  for (const auto& b : buckets_) {
    std::vector<std::string> members;
    for (size_t i : b->members()) members.push_back(names[i]);
    out.push_back(std::move(members));
  }
  return out;
}

std::vector<int64_t> Reducer::Impl::bucket_bytes() const {
  std::vector<int64_t> out;
  for (const auto& b : buckets_) out.push_back(static_cast<int64_t>(b->bytes()));
  return out;
}

void Reducer::Impl::write_timeline(const std::string& path) const {
  timeline.write_chrome_trace(timeline_path_for(path, rank_), rank_, names, origin_);
}

} // namespace ddp
