#include "reducer/reducer_impl.h"

#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/StringUtil.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include <ddp/collectives.h>
#include <ddp/error.h>

#include "bucket/bucket_assignment.h"
#include "bucket/slot_copy.h"
#include "comm/consistency_check.h"
#include "common/check.h"
#include "common/logging.h"
#include "common/timeouts.h"

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

// Adds the time from its construction to its destruction to a nanosecond counter of
// ReducerStats, however the scope is left.
class ScopedTimer {
 public:
  explicit ScopedTimer(int64_t& total_ns) : total_ns_(total_ns), start_(std::chrono::steady_clock::now()) {}
  ~ScopedTimer() {
    total_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count();
  }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  int64_t& total_ns_;
  const std::chrono::steady_clock::time_point start_;
};

std::string timeline_path_for(const std::string& path, int rank) {
  const auto slash = path.find_last_of('/');
  const auto dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) {
    return fmt::format("{}.rank{}", path, rank);
  }
  return fmt::format("{}.rank{}{}", path.substr(0, dot), rank, path.substr(dot));
}

Reducer::NamedParameters validated(const Reducer::NamedParameters& parameters, int rank) {
  Reducer::NamedParameters kept;
  std::unordered_set<const void*> seen_tensors;
  std::unordered_set<std::string> seen_names;
  for (const auto& [name, tensor] : parameters) {
    if (!tensor.defined()) {
      throw InvalidArgumentError(fmt::format("[ddp rank {}] parameter '{}' is an undefined tensor", rank, name));
    }
    if (!tensor.requires_grad()) continue; // frozen: nothing to reduce (but checked across ranks)
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

// What every rank must agree on before the first collective of the reducer: the options
// that shape the collective sequence, every parameter (frozen ones are broadcast too) and
// every buffer.
std::vector<detail::ConsistencyItem> construction_items(const Options& o, const Reducer::NamedParameters& parameters,
                                                        const Reducer::NamedParameters& buffers) {
  using Kind = detail::ConsistencyItem::Kind;
  std::vector<detail::ConsistencyItem> items = {
      {Kind::kOption, "bucket_cap_mb", fmt::format("{}", o.bucket_cap_mb)},
      {Kind::kOption, "first_bucket_cap_mb", fmt::format("{}", o.first_bucket_cap_mb)},
      {Kind::kOption, "in_place_min_mb", fmt::format("{}", o.in_place_min_mb)},
      {Kind::kOption, "gradient_as_bucket_view", o.gradient_as_bucket_view ? "true" : "false"},
      {Kind::kOption, "broadcast_buffers", o.broadcast_buffers ? "true" : "false"},
      {Kind::kOption, "static_graph", o.static_graph ? "true" : "false"},
      // Strict and deferred ranks would go on differently after a rank's error.
      {Kind::kOption, "step_check",
       o.step_check == Options::StepCheck::kAuto ? "auto" : (o.step_check == Options::StepCheck::kStrict ? "strict"
                                                                                                         : "deferred")},
  };
  for (const auto& [name, t] : parameters) {
    items.push_back({Kind::kParameter, name, t.defined() ? detail::describe_tensor(t, !t.requires_grad()) : "undefined"});
  }
  for (const auto& [name, t] : buffers) {
    items.push_back({Kind::kBuffer, name, t.defined() ? detail::describe_tensor(t) : "undefined"});
  }
  return items;
}

// Which Reducer hooks which parameter: a module wrapped twice would have two sets of
// hooks on one accumulator, and the idle one would blame the user's forward.
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::unordered_map<const c10::TensorImpl*, const void*>& registry() {
  static std::unordered_map<const c10::TensorImpl*, const void*> r;
  return r;
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
  if (!(options.in_place_min_mb >= 0 || options.in_place_min_mb == -1.0)) {
    throw bad("in_place_min_mb", options.in_place_min_mb, ">= 0 (MiB), or -1 for the default");
  }
  if (options.timeout.count() <= 0) {
    throw bad("timeout", static_cast<double>(options.timeout.count()), "> 0 milliseconds");
  }
  // DDP_TIMEOUT_S replaces the default; a timeout set in the code wins over it. A value
  // that is not a number of seconds is an error naming the variable, on every path.
  if (auto env = detail::seconds_from_env("DDP_TIMEOUT_S", rank); env && options.timeout == Options{}.timeout) {
    options.timeout = *env;
  }
  if (const char* s = std::getenv("DDP_TIMELINE")) {
    if (*s != '\0') options.timeline_path = s;
  }
  if (const char* s = std::getenv("DDP_STEP_CHECK"); s != nullptr && *s != '\0') {
    const std::string mode = s;
    if (mode == "auto") {
      options.step_check = Options::StepCheck::kAuto;
    } else if (mode == "strict") {
      options.step_check = Options::StepCheck::kStrict;
    } else if (mode == "deferred") {
      options.step_check = Options::StepCheck::kDeferred;
    } else {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] DDP_STEP_CHECK=\"{}\" is not a step-check mode: use auto, strict or deferred "
          "(docs/semantics.md, \"Ranks in step\"), or unset it",
          rank, mode));
    }
  }
  return options;
}

bool deferred_step_check(const Options& options, const c10::Device& comm_device) {
  if (options.step_check == Options::StepCheck::kAuto) return comm_device.is_cuda();
  return options.step_check == Options::StepCheck::kDeferred;
}

} // namespace

Reducer::Impl::Impl(NamedParameters all_parameters, NamedParameters buffers, std::shared_ptr<ProcessGroup> group,
                    Options opts)
    : Impl(validated(all_parameters, group->rank()), all_parameters, std::move(buffers), group, std::move(opts)) {}

Reducer::Impl::Impl(NamedParameters parameters, const NamedParameters& all_parameters, NamedParameters buffers,
                    std::shared_ptr<ProcessGroup> group, Options opts)
    : names(parameter_names_of(parameters)),
      parameters(tensors_of(parameters)),
      process_group(std::move(group)),
      options(validated(std::move(opts), process_group->rank())),
      timeline(!options.timeline_path.empty()),
      rank_(process_group->rank()),
      world_size_(process_group->size()),
      comm_device_(process_group->device()),
      deferred_(deferred_step_check(options, comm_device_)) {
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    for (size_t i = 0; i < this->parameters.size(); ++i) {
      if (registry().count(this->parameters[i].unsafeGetTensorImpl())) {
        throw InvalidArgumentError(fmt::format(
            "{} parameter '{}' is already managed by another ddp::Reducer: the module is wrapped by two "
            "DistributedDataParallel objects (or two Reducers share parameters). Wrap each module once; destroy "
            "the first wrapper before wrapping the module again.",
            rank_prefix(), names[i]));
      }
    }
  }
  // One collective: options, every parameter (frozen too) and every buffer.
  detail::verify_consistent(*process_group, construction_items(options, all_parameters, buffers));
  const size_t n = this->parameters.size();
  for (const auto& p : this->parameters) {
    dtypes_.push_back(p.scalar_type());
    devices_.push_back(p.device());
    shapes_.push_back(p.sizes().vec());
    managed_.insert(p.unsafeGetTensorImpl());
  }
  marked_.assign(n, 0);
  marked_early_.assign(n, 0);
  local_used_.assign(n, 0);
  reachable_.assign(n, 0);
  last_used_by_.assign(n, world_size_);
  last_local_used_.assign(n, 1);
  scale_ = at::scalar_tensor(1.0 / world_size_, at::TensorOptions().dtype(at::kDouble));
  scale_value_ = 1.0 / world_size_;
  // The flags and the header travel on the group's device; host mirrors are filled and
  // read without allocating per iteration.
  const auto row = static_cast<int64_t>(n + kStatusBytes);
  used_local_ = at::zeros({row}, at::TensorOptions().dtype(at::kByte).device(comm_device_));
  used_all_ = at::zeros({world_size_, row}, used_local_.options());
  for (int r = 0; r < world_size_; ++r) used_all_rows_.push_back(used_all_[r]);
  used_local_host_ = comm_device_.is_cpu() ? used_local_ : at::zeros_like(used_local_, at::kCPU);
  used_all_host_ = comm_device_.is_cpu() ? used_all_ : at::zeros_like(used_all_, at::kCPU);
  statuses_.assign(world_size_, kOk);
  header_local_ = at::zeros({3}, at::TensorOptions().dtype(at::kLong).device(comm_device_));
  header_all_ = at::zeros({world_size_, 3}, header_local_.options());
  for (int r = 0; r < world_size_; ++r) header_rows_.push_back(header_all_[r]);
  build_buckets(detail::reverse_order(n));
}

Reducer::Impl::~Impl() {
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    for (const auto& p : parameters) {
      auto it = registry().find(p.unsafeGetTensorImpl());
      if (it != registry().end() && it->second == this) registry().erase(it);
    }
  }
  for (size_t i = 0; i < accumulators_.size() && i < hook_keys_.size(); ++i) {
    accumulators_[i]->del_post_hook(hook_keys_[i]);
  }
  if (phase_ == Phase::kArmed) {
    detail::log(detail::LogLevel::kWarn, rank_,
                "the DistributedDataParallel wrapper (or ddp::Reducer) of step {} was destroyed after its forward "
                "and before its backward: that backward will not be reduced (each rank keeps its local gradients). "
                "Keep the wrapper alive until backward() returns.",
                step_);
  }
  // Every deferred result is read (bounded: a collective that hangs is aborted by the
  // group's watchdog): a failure in the last steps is at least reported, and no goodbye is
  // sent into a group that is out of step. Reducer::synchronize() raises it instead.
  if (deferred_ && broken_.empty()) {
    try {
      drain_reads(/*block=*/true);
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
  if (world_size_ > 1 && broken_.empty() && phase_ == Phase::kBackward && header_verified_) {
    try {
      complete_interrupted_section();
      phase_ = Phase::kIdle;
    } catch (const std::exception& e) {
      detail::log(detail::LogLevel::kWarn, rank_, "could not complete the interrupted backward: {}", e.what());
    }
  }
  // Goodbye: a peer still training waits on a section header; this one tells it that this
  // rank has finished, instead of leaving it to time out. Not waited on here: it completes
  // when the peers reach their next header (or their own goodbye).
  if (world_size_ > 1 && broken_.empty() && phase_ != Phase::kBackward) {
    try {
      int64_t record[3] = {static_cast<int64_t>(Section::kFinished), step_, state_syncs_};
      at::Tensor local = at::from_blob(record, {3}, at::kLong).clone().to(comm_device_);
      std::vector<at::Tensor> rows;
      for (int r = 0; r < world_size_; ++r) rows.push_back(at::empty({3}, local.options()));
      process_group->allgather(rows, local);
    } catch (const std::exception& e) {
      detail::log(detail::LogLevel::kWarn, rank_, "could not tell the other ranks that this one finished: {}",
                  e.what());
    }
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
  std::lock_guard<std::mutex> lock(registry_mutex());
  for (const auto& p : parameters) registry()[p.unsafeGetTensorImpl()] = this;
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
  bucket_names_.clear();
  bucket_shapes_.clear();
  for (const auto& bucket : buckets_) {
    auto bucket_names = std::make_shared<std::vector<std::string>>();
    auto shapes = std::make_shared<std::vector<std::vector<int64_t>>>();
    for (size_t index : bucket->members()) {
      bucket_names->push_back(names[index]);
      shapes->push_back(shapes_[index]);
    }
    bucket_names_.push_back(std::move(bucket_names));
    bucket_shapes_.push_back(std::move(shapes));
  }
  futures_.assign(buckets_.size(), nullptr);
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
  // Local: rank 0's order arrived in the first iteration's section (finalize), so every
  // rank builds the same buckets here without a collective of its own.
  if (rebuilt_ || rebuild_order_.empty()) return;
  rebuilt_ = true;
  stats.bucket_rebuilds += 1;
  build_buckets(rebuild_order_);
}

void Reducer::Impl::throw_if_broken() const {
  if (!broken_.empty()) throw ReductionError(broken_);
}

void Reducer::Impl::check_parameters_unchanged() const {
  for (size_t i = 0; i < parameters.size(); ++i) {
    const at::Tensor& p = parameters[i];
    // A new dtype or device is exactly when set_data (what Module::to() uses) drops the
    // parameter's gradient accumulator, and with it our hook; a new shape breaks the
    // bucket slot. The accumulator itself cannot change otherwise while we hold it.
    if (p.scalar_type() == dtypes_[i] && p.device() == devices_[i] && p.sizes() == shapes_[i]) continue;
    throw ReductionError(fmt::format(
        "{} parameter '{}' changed after it was wrapped: it is now {} {} on {} (was {} {} on {}){}. Its gradient "
        "hook is gone, so its gradients would no longer be averaged and the ranks would diverge. Move, cast or "
        "replace the module's parameters (module->to(...), replace_module, set_data) before wrapping it, and wrap "
        "it again after any such change.",
        rank_prefix(), names[i], c10::toString(p.scalar_type()), c10::str(p.sizes()), p.device().str(),
        c10::toString(dtypes_[i]), c10::str(at::IntArrayRef(shapes_[i])), devices_[i].str(), ""));
  }
}

bool Reducer::Impl::manages(const at::Tensor& tensor) const {
  return managed_.count(tensor.unsafeGetTensorImpl()) > 0;
}

std::string Reducer::Impl::describe_header(const int64_t* record) const {
  switch (static_cast<Section>(record[0])) {
    case Section::kModuleState:
      return fmt::format("broadcasting buffers for its forward #{} (training step {})", record[2] + 1, record[1]);
    case Section::kReduction:
      return fmt::format("reducing the gradients of training step {}", record[1]);
    case Section::kFinished:
      return fmt::format("finished: its DistributedDataParallel (Reducer) was destroyed after training step {}",
                         record[1]);
    case Section::kJoin:
      return fmt::format("agreeing on the ranks that still have data (ddp::Join) before training step {}",
                         record[1] + 1);
    case Section::kCommHook:
      return "registering a communication hook (register_comm_hook)";
  }
  return fmt::format("in an unknown section {} (not a libddp collective: a collective of the application's own?)",
                     record[0]);
}

void Reducer::Impl::exchange_header(Section section, bool wait) {
  if (world_size_ == 1) {
    header_verified_ = true;
    return;
  }
  const auto start = Clock::now();
  const int64_t record[3] = {static_cast<int64_t>(section), step_, state_syncs_};
  if (deferred_) {
    // Launches are not held back for it: drain_reads compares the records once they
    // have arrived, and a group out of step is stopped then.
    gather_deferred(PendingRead::Kind::kHeader, to_comm_device(at::from_blob(const_cast<int64_t*>(record), {3},
                                                                             at::kLong)));
    header_verified_ = true;
    stats.collectives += 1;
    stats.step_check_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
    return;
  }
  int64_t* h = header_local_.is_cpu() ? header_local_.data_ptr<int64_t>() : nullptr;
  if (h != nullptr) {
    std::copy(record, record + 3, h);
  } else {
    header_local_.copy_(at::from_blob(const_cast<int64_t*>(record), {3}, at::kLong));
  }
  header_verified_ = false;
  header_work_ = process_group->allgather(header_rows_, header_local_);
  stats.collectives += 1;
  stats.step_check_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  if (wait) verify_header();
}

void Reducer::Impl::verify_header() {
  // Timed as the cost of the check: the wait includes any skew between the ranks, which
  // the first collective of the section would otherwise absorb, so this is an upper bound.
  const ScopedTimer timer(stats.step_check_ns);
  header_work_->wait(timeout());
  header_work_.reset();
  at::Tensor all = header_all_.is_cpu() ? header_all_ : header_all_.cpu();
  check_header_records(all.data_ptr<int64_t>());
  header_verified_ = true;
}

void Reducer::Impl::check_header_records(const int64_t* a) {
  bool same = true;
  for (int r = 1; r < world_size_; ++r) same = same && std::equal(a, a + 3, a + 3 * r);
  if (same) return;
  std::string states;
  std::string finished;
  for (int r = 0; r < world_size_; ++r) {
    states += fmt::format("{}rank {} is {}", r ? "; " : "", r, describe_header(a + 3 * r));
    if (static_cast<Section>(a[3 * r]) == Section::kFinished) finished += fmt::format("{}{}", finished.empty() ? "" : ",", r);
  }
  std::string cause;
  if (!finished.empty()) {
    cause = fmt::format(
        "Rank(s) {} finished training while the others go on: its training loop ended (uneven inputs) or an "
        "exception took it out of the loop (see that rank's output). Every rank must run the same number of "
        "iterations: give every rank the same number of batches (drop the last, uneven ones).",
        finished);
  } else {
    cause =
        "A rank skipped a gradient reduction or ran an extra forward: no_sync() on some ranks only, an exception "
        "caught in forward or backward on some ranks only, a loss that does not depend on the forward's outputs on "
        "some ranks, or a training forward through the wrapper that was not backpropagated on some ranks. Every rank "
        "must run the same sequence of forward and backward passes.";
  }
  fail_out_of_step(fmt::format(
      "{} the ranks are out of step: {}. {} Their collectives no longer pair up, so the reducer stops here on every "
      "rank (its gradients are not averaged); restart from the last checkpoint.",
      rank_prefix(), states, cause));
}

void Reducer::Impl::fail_out_of_step(std::string message, bool paired_wrongly) {
  broken_ = std::move(message);
  // Deferred: collectives issued after a header mismatch may be paired with the wrong
  // ones and never complete; end them, so that no stream or exit waits on them. Not after
  // a rank's bad status: its collectives paired correctly, and aborting at once could cut
  // a peer's part of the same exchange short.
  if (deferred_ && paired_wrongly) {
    try {
      process_group->abort(broken_);
    } catch (const std::exception& e) {
      detail::log(detail::LogLevel::kWarn, rank_, "could not abort the process group: {}", e.what());
    }
  }
  throw ReductionError(broken_);
}

at::Tensor Reducer::Impl::to_comm_device(const at::Tensor& values) const {
  if (comm_device_.is_cpu()) return values.clone();
  // From pinned memory a host-to-device copy is queued, not waited for (a pageable one
  // would wait for the stream to drain first).
  at::Tensor pinned = at::empty(values.sizes(), values.options().pinned_memory(true));
  pinned.copy_(values);
  at::Tensor on_device = at::empty(values.sizes(), values.options().device(comm_device_));
  on_device.copy_(pinned, /*non_blocking=*/true);
  return on_device;
}

std::shared_ptr<Work> Reducer::Impl::gather_rows(const at::Tensor& local, at::Tensor& all) {
  all = at::empty({world_size_, local.numel()}, local.options());
  std::vector<at::Tensor> rows;
  rows.reserve(static_cast<size_t>(world_size_));
  for (int r = 0; r < world_size_; ++r) rows.push_back(all[r]);
  return process_group->allgather(rows, local);
}

std::shared_ptr<Work> Reducer::Impl::gather_deferred(PendingRead::Kind kind, const at::Tensor& local) {
  at::Tensor all;
  auto work = gather_rows(local, all);
  PendingRead read{kind, work, all, all, nullptr, step_, iteration_};
  if (comm_device_.is_cuda()) {
    // The host copy follows the gather on a side stream, and the event says when it is
    // there: nothing waits, neither the host nor the backward's stream (a stream wait
    // there would hold the backward's kernels until every rank's header arrived). `all`
    // stays alive in the read until the event has fired.
    const c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
    const c10::Stream side = cuda.getStreamFromGlobalPool(comm_device_, /*isHighPriority=*/false);
    c10::StreamGuard on_side(side);
    work->wait();
    read.host = at::empty(all.sizes(), all.options().device(at::kCPU).pinned_memory(true));
    read.host.copy_(all, /*non_blocking=*/true);
    read.copied = std::make_shared<c10::Event>(c10::DeviceType::CUDA);
    read.copied->record(side);
  }
  pending_reads_.push_back(std::move(read));
  return work;
}

void Reducer::Impl::drain_reads(bool block) {
  const ScopedTimer timer(stats.step_check_ns);
  while (!pending_reads_.empty()) {
    PendingRead& front = pending_reads_.front();
    const bool arrived = front.copied ? front.copied->query() : front.work->is_completed();
    if (!arrived) {
      // Bounded lag: a GPU more than a few collectives behind makes the host wait here.
      if (!block && pending_reads_.size() <= kMaxPendingReads) return;
      if (front.copied) {
        front.copied->synchronize(); // bounded: the group's watchdog aborts a collective that hangs
      } else {
        front.work->wait(timeout());
      }
    }
    PendingRead read = std::move(front);
    pending_reads_.pop_front();
    read.work->wait(timeout()); // complete: rethrows its failure, if it failed
    if (read.kind == PendingRead::Kind::kHeader) {
      check_header_records(read.host.data_ptr<int64_t>());
    } else {
      check_flags(read);
    }
  }
}

void Reducer::Impl::settle_reads() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (deferred_ && broken_.empty()) drain_reads(/*block=*/true);
}

void Reducer::Impl::check_flags(const PendingRead& read) {
  const size_t n = parameters.size();
  const uint8_t* flags = read.host.data_ptr<uint8_t>();
  std::vector<int64_t> used_by(n, 0);
  std::vector<uint8_t> statuses(static_cast<size_t>(world_size_), kOk);
  for (int r = 0; r < world_size_; ++r) {
    const uint8_t* row = flags + r * (n + kStatusBytes);
    for (size_t i = 0; i < n; ++i) used_by[i] += row[i];
    statuses[static_cast<size_t>(r)] = row[n];
  }
  if (!std::all_of(statuses.begin(), statuses.end(), [](uint8_t s) { return s == kOk; })) {
    const std::string who = describe_failures(statuses, flags, n);
    fail_out_of_step(fmt::format(
        "{} the backward of training step {} did not go right: {}. With the deferred step check (the default on a "
        "CUDA process group; Options::step_check, DDP_STEP_CHECK) the ranks' statuses are read once they arrive, so "
        "this rank had already written that step's gradients, averaged with an incomplete contribution, and an "
        "optimizer step taken with them may differ across ranks. The reducer stops on every rank: restart from the "
        "last checkpoint. With DDP_STEP_CHECK=strict such a step is recoverable, at one host synchronisation per step.",
        rank_prefix(), read.step, who), /*paired_wrongly=*/false);
  }
  if (options.static_graph && learned_static_) used_by = static_used_by_;
  if (read.iteration >= used_by_iteration_) {
    used_by_iteration_ = read.iteration;
    last_used_by_ = used_by;
  }
  // A read is deferred only when this rank used every parameter in that backward.
  report_unused(used_by, flags, std::vector<char>(n, 1), read.iteration);
}

void Reducer::Impl::wait_ordered(Work& work) const {
  if (comm_device_.is_cuda()) {
    work.wait();
  } else {
    work.wait(timeout());
  }
}

void Reducer::Impl::complete_interrupted_section(std::unique_lock<std::mutex>* lock) {
  for (size_t b = next_to_launch_; b < buckets_.size(); ++b) {
    buckets_[b]->set_in_place(at::Tensor()); // never reduce garbage into a user's .grad
    if (comm_hook_) {
      run_hook(b);
    } else {
      buckets_[b]->work() = process_group->allreduce(buckets_[b]->comm_tensor());
    }
    stats.collectives += 1;
  }
  next_to_launch_ = buckets_.size();
  // A hook's continuations issue collectives before the status exchange, in finalize's
  // order; a collective that does not complete (CommError, TimeoutError) ends it here,
  // before any status is sent into a group out of step.
  if (comm_hook_ && !flags_work_) {
    if (lock) lock->unlock();
    std::exception_ptr failure;
    try {
      complete_hook_futures(iteration_, /*interrupted=*/true);
    } catch (...) {
      failure = std::current_exception();
    }
    if (lock) lock->lock();
    if (failure) std::rethrow_exception(failure);
  }
  if (!flags_work_ && deferred_) {
    at::Tensor flags = at::zeros({static_cast<int64_t>(parameters.size() + kStatusBytes)}, at::kByte);
    write_status(flags.data_ptr<uint8_t>(), kAbandoned);
    flags_work_ = gather_deferred(PendingRead::Kind::kFlags, to_comm_device(flags));
    stats.collectives += 1;
  } else if (!flags_work_) {
    std::fill_n(used_local_host_.data_ptr<uint8_t>(), parameters.size(), 0);
    write_status(used_local_host_.data_ptr<uint8_t>(), kAbandoned);
    if (!used_local_.is_same(used_local_host_)) used_local_.copy_(used_local_host_);
    flags_work_ = process_group->allgather(used_all_rows_, used_local_);
    stats.collectives += 1;
  }
}

void Reducer::Impl::settle_interrupted_backward(std::unique_lock<std::mutex>& lock) {
  // The previous backward raised before finalize (an exception in a backward function, a
  // hook's error, a timeout). Its section may be cut anywhere; complete it the same way on
  // every rank: the header, every bucket, and the status exchange saying "abandoned".
  const int64_t step = step_;
  const std::string cause = interrupted_cause_.empty() ? "an exception was raised during backward" : interrupted_cause_;
  std::vector<std::shared_ptr<Work>> pending;
  std::exception_ptr failure;
  try {
    if (world_size_ > 1) {
      if (!header_verified_) {
        throw_if_broken();
        if (!header_work_) {
          // Its header was never issued (issuing it failed): the peers may have issued
          // theirs, so the section cannot be completed alike on every rank.
          broken_ = fmt::format("{} the backward of training step {} was interrupted before its section header could be "
                                "issued ({}); the ranks are out of step: restart from the last checkpoint.",
                                rank_prefix(), step, cause);
          throw ReductionError(broken_);
        }
        verify_header(); // a late peer may have arrived since; throws (broken) if out of step
      }
      complete_interrupted_section(&lock);
      for (auto& b : buckets_) {
        if (b->work()) pending.push_back(b->work());
      }
      pending.push_back(flags_work_);
    }
  } catch (...) {
    failure = std::current_exception();
  }
  lock.unlock();
  for (auto& w : pending) {
    if (failure) break;
    try {
      w->wait(timeout());
    } catch (...) {
      failure = std::current_exception();
    }
  }
  lock.lock();
  reset_iteration();
  phase_ = Phase::kIdle;
  iteration_ += 1;
  // Deferred: the "abandoned" status reaches the other ranks after they wrote this step's
  // gradients, so no rank can go on; reading it here stops this rank the same way.
  if (!failure && deferred_) {
    try {
      drain_reads(/*block=*/true);
    } catch (const ReductionError&) {
      throw;
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (failure) {
    if (broken_.empty()) {
      try {
        std::rethrow_exception(failure);
      } catch (const std::exception& e) {
        broken_ = fmt::format("{} the backward of training step {} was interrupted ({}) and could not be completed "
                              "on every rank: {}. The ranks are out of step; restart from the last checkpoint.",
                              rank_prefix(), step, cause, e.what());
      }
    }
    throw ReductionError(broken_);
  }
  throw ReductionError(fmt::format(
      "{} the backward of training step {} did not finish ({}), so its gradients were not averaged on any rank. The "
      "reducer has completed that step's collectives with the other ranks and is ready: zero the gradients and go on "
      "with the next batch.",
      rank_prefix(), step, cause));
}

void Reducer::Impl::prepare_for_forward() {
  std::unique_lock<std::mutex> lock(mutex_);
  throw_if_broken();
  // On a CPU group (the deferred check runs there only when asked for) the previous
  // backward's flags are read now: the host already waited for its buckets, so this is one
  // small collective at most, and an MPI collective that a failed peer never joins could
  // not be ended. On CUDA only what has arrived; a group left hanging is aborted.
  if (deferred_) drain_reads(/*block=*/!comm_device_.is_cuda());
  if (phase_ == Phase::kBackward) settle_interrupted_backward(lock);
  const auto check_start = Clock::now();
  full_check_this_forward = check_due_ || step_ % kFullCheckEvery == 0;
  check_due_ = false;
  if (full_check_this_forward) check_parameters_unchanged();
  stats.step_check_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - check_start).count();
  if (phase_ == Phase::kArmed || phase_ == Phase::kArmedNoSync) {
    // A forward without a backward (evaluation with grad enabled): nothing was launched.
    reset_iteration();
  }
  phase_ = Phase::kIdle;
  extra_backward_ = false;
  if (join_armed_ && world_size_ > 1) {
    const auto flags = exchange_join(/*active=*/true);
    std::string joined;
    int active = 0;
    for (int r = 0; r < world_size_; ++r) {
      if (flags[static_cast<size_t>(r)].first) {
        active += 1;
        authoritative_rank_ = r; // the highest active rank, as in PyTorch
      } else {
        joined += fmt::format("{}{}", joined.empty() ? "" : ",", r);
      }
    }
    if (!joined.empty() && join_throw_on_early_termination_) {
      join_armed_ = false;
      join_terminated_ = true;
      set_divisor(world_size_);
      throw ReductionError(fmt::format(
          "{} rank(s) {} ran out of inputs before training step {} (ddp::Join with throw_on_early_termination): "
          "every rank raises this at the same step. Catch it on every rank to end the epoch, or set "
          "throw_on_early_termination = false to let the ranks with data go on.",
          rank_prefix(), joined, step_ + 1));
    }
    set_divisor(join_divide_by_initial_world_size_ ? world_size_ : active);
  }
  step_ += 1;
  rebuild_buckets_if_due();
}

void Reducer::Impl::set_divisor(int divisor) {
  const double value = 1.0 / divisor;
  if (value == scale_value_) return;
  scale_value_ = value;
  scale_.fill_(value);
}

std::vector<std::pair<bool, bool>> Reducer::Impl::exchange_join(bool active) {
  const int64_t record[3] = {static_cast<int64_t>(Section::kJoin), step_,
                             (active ? 1 : 0) | (active && require_sync ? 2 : 0)};
  at::Tensor local = to_comm_device(at::from_blob(const_cast<int64_t*>(record), {3}, at::kLong));
  const auto start = Clock::now();
  at::Tensor all;
  gather_rows(local, all)->wait(timeout());
  stats.collectives += 1;
  at::Tensor host = all.cpu();
  stats.step_check_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  const int64_t* a = host.data_ptr<int64_t>();
  bool aligned = true;
  for (int r = 0; r < world_size_; ++r) {
    aligned = aligned && a[3 * r] == static_cast<int64_t>(Section::kJoin) && a[3 * r + 1] == step_;
  }
  if (!aligned) {
    std::string states;
    for (int r = 0; r < world_size_; ++r) {
      states += fmt::format("{}rank {} is {}", r ? "; " : "", r, describe_header(a + 3 * r));
    }
    fail_out_of_step(fmt::format(
        "{} the ranks are out of step: {}. ddp::Join must be used on every rank, around the same training loop, "
        "and every rank must run the same forwards until it joins; restart from the last checkpoint.",
        rank_prefix(), states));
  }
  std::vector<std::pair<bool, bool>> flags;
  for (int r = 0; r < world_size_; ++r) flags.emplace_back((a[3 * r + 2] & 1) != 0, (a[3 * r + 2] & 2) != 0);
  return flags;
}

void Reducer::Impl::arm_join(bool throw_on_early_termination, bool divide_by_initial_world_size) {
  std::lock_guard<std::mutex> lock(mutex_);
  throw_if_broken();
  join_armed_ = true;
  join_terminated_ = false;
  join_throw_on_early_termination_ = throw_on_early_termination;
  join_divide_by_initial_world_size_ = divide_by_initial_world_size;
}

void Reducer::Impl::disarm_join() {
  std::lock_guard<std::mutex> lock(mutex_);
  join_armed_ = false;
  set_divisor(world_size_);
}

void Reducer::Impl::join(const std::function<std::vector<at::Tensor>()>& buffers,
                         const std::vector<at::Tensor>& final_state) {
  std::unique_lock<std::mutex> lock(mutex_);
  throw_if_broken();
  if (!join_armed_) {
    // Every rank already raised the early termination: there is nothing left to join.
    if (join_terminated_) return;
    throw ReductionError(fmt::format("{} join() without an enabled ddp::Join on this reducer", rank_prefix()));
  }
  if (world_size_ == 1) {
    join_armed_ = false;
    return;
  }
  if (phase_ == Phase::kBackward) settle_interrupted_backward(lock);
  if (phase_ == Phase::kArmed || phase_ == Phase::kArmedNoSync) reset_iteration(); // a forward never backpropagated
  if (deferred_) drain_reads(/*block=*/true);
  // Shadow the active ranks, one of their training steps per round: the same sections,
  // headers included (the same step and broadcast counts), the buckets with zeros and
  // "used nothing" flags, so that their collectives pair up and nothing of this rank
  // enters their averages.
  for (;;) {
    const auto flags = exchange_join(/*active=*/false);
    int active = 0;
    bool reduces = false;
    for (int r = 0; r < world_size_; ++r) {
      if (!flags[static_cast<size_t>(r)].first) continue;
      active += 1;
      reduces = reduces || flags[static_cast<size_t>(r)].second;
      authoritative_rank_ = r;
    }
    if (active == 0) break;
    if (join_throw_on_early_termination_) {
      join_armed_ = false;
      join_terminated_ = true;
      set_divisor(world_size_);
      throw ReductionError(fmt::format(
          "{} this rank ran out of inputs before training step {} while {} rank(s) still had data (ddp::Join with "
          "throw_on_early_termination): every rank raises this at the same step.",
          rank_prefix(), step_ + 1, active));
    }
    // What the active ranks' prepare_for_forward does.
    phase_ = Phase::kIdle;
    extra_backward_ = false;
    step_ += 1;
    rebuild_buckets_if_due();
    if (options.broadcast_buffers) {
      std::vector<at::Tensor> tensors = buffers();
      if (!tensors.empty()) {
        exchange_header(Section::kModuleState);
        state_syncs_ += 1;
        lock.unlock();
        broadcast_coalesced(*process_group, tensors, authoritative_rank_);
        lock.lock();
      }
    }
    if (!reduces) continue; // a no_sync() step on the active ranks
    phase_ = Phase::kArmed;
    begin_backward(Clock::now(), /*queue_finalize=*/false);
    shadowing_ = true;
    lock.unlock();
    try {
      finalize(); // every slot zero: this rank used no parameter
    } catch (...) {
      lock.lock();
      shadowing_ = false;
      throw;
    }
    lock.lock();
    shadowing_ = false;
  }
  // Every rank has joined: all take the last active rank's parameters and buffers, so that
  // they leave in the same state (a joined rank did not step its optimizer meanwhile).
  join_armed_ = false;
  set_divisor(world_size_);
  lock.unlock();
  broadcast_coalesced(*process_group, final_state, authoritative_rank_);
}

void Reducer::Impl::register_comm_hook(std::shared_ptr<CommHook> hook) {
  std::unique_lock<std::mutex> lock(mutex_);
  throw_if_broken();
  if (!hook) {
    throw InvalidArgumentError(fmt::format(
        "{} register_comm_hook: the hook is null; pass one of ddp::hooks (e.g. ddp::hooks::fp16_compress()) or a "
        "ddp::CommHook of your own",
        rank_prefix()));
  }
  const std::string name = hook->name();
  if (comm_hook_) {
    throw InvalidArgumentError(fmt::format(
        "{} register_comm_hook('{}'): communication hook '{}' is already registered. Register one hook, once, before "
        "the first forward (to combine two, wrap one in the other, as ddp::hooks::compress(inner, dtype) does).",
        rank_prefix(), name, comm_hook_->name()));
  }
  if (step_ > 0 || iteration_ > 0 || phase_ != Phase::kIdle) {
    throw InvalidArgumentError(fmt::format(
        "{} register_comm_hook('{}') after training step {} started: register the hook before the first forward, "
        "on every rank, as in PyTorch (the buckets of a step already begun were reduced without it).",
        rank_prefix(), name, step_));
  }
  if (world_size_ > 1) {
    if (deferred_) drain_reads(/*block=*/true);
    // Shaped like a section header, so that a rank that does not register (and goes on
    // to its first forward's header) is named instead of pairing with something else.
    const int64_t record[3] = {static_cast<int64_t>(Section::kCommHook), step_, state_syncs_};
    at::Tensor all;
    gather_rows(to_comm_device(at::from_blob(const_cast<int64_t*>(record), {3}, at::kLong)), all)->wait(timeout());
    stats.collectives += 1;
    check_header_records(all.cpu().data_ptr<int64_t>());
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
  comm_hook_ = std::move(hook);
  hook_group_ = std::make_shared<detail::HookProcessGroup>(process_group);
}

void Reducer::Impl::sync_module_state(const std::vector<at::Tensor>& tensors) {
  std::unique_lock<std::mutex> lock(mutex_);
  throw_if_broken();
  if (world_size_ == 1 || tensors.empty()) return;
  if (phase_ == Phase::kBackward) settle_interrupted_backward(lock);
  // A forward under NoGradGuard between a training forward and its backward keeps the
  // buffers as they are: the pending backward may have saved them (BatchNorm saves its
  // running statistics), and overwriting them in place would break it. The next training
  // forward broadcasts them.
  if (!at::GradMode::is_enabled() && (phase_ == Phase::kArmed || phase_ == Phase::kArmedNoSync)) return;
  if (deferred_) drain_reads(/*block=*/!comm_device_.is_cuda());
  exchange_header(Section::kModuleState);
  state_syncs_ += 1;
  const int root = authoritative_rank_; // 0, or the last active rank under ddp::Join
  lock.unlock();
  broadcast_coalesced(*process_group, tensors, root);
}

void Reducer::Impl::prepare_for_backward(const std::vector<at::Tensor>& outputs) {
  std::lock_guard<std::mutex> lock(mutex_);
  throw_if_broken();
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
  if (options.static_graph && learned_static_) {
    for (size_t i = 0; i < parameters.size(); ++i) {
      if (!static_local_used_[i]) marked_early_[i] = 1;
    }
  } else if (options.find_unused_parameters) {
    const auto start = Clock::now();
    stats.graph_walk_nodes = static_cast<int64_t>(walker_->walk(outputs, reachable_));
    for (size_t i = 0; i < parameters.size(); ++i) {
      if (!reachable_[i]) marked_early_[i] = 1;
    }
    stats.graph_walk_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  }
}

void Reducer::Impl::queue_finalize() {
  if (finalize_queued_) return;
  finalize_queued_ = true;
  std::weak_ptr<Impl> self = weak_from_this();
  torch::autograd::Engine::get_default_engine().queue_callback([self] {
    if (auto impl = self.lock()) impl->finalize();
  });
}

void Reducer::Impl::begin_backward(Clock::time_point start, bool queue) {
  phase_ = Phase::kBackward;
  backward_start_ = start;
  interrupted_cause_.clear();
  // The slots prepare_for_backward flagged, filled on this (the backward's) thread and
  // stream, before any bucket of this section can launch.
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (marked_early_[i] && !marked_[i]) mark_without_hook(i);
  }
  // Issued now, checked before the first bucket launches (launch_ready_buckets): the
  // exchange runs on the communication thread while the backward computes, and nothing of
  // this section is launched before every rank is known to be at the same step.
  exchange_header(Section::kReduction, /*wait=*/false);
  if (queue) queue_finalize();
}

void Reducer::Impl::verify_reduction_header() {
  if (header_verified_ || !header_work_) return;
  try {
    verify_header();
  } catch (const TimeoutError&) {
    interrupted_cause_ = "the other ranks did not start the same backward within the timeout";
    throw;
  }
}

void Reducer::Impl::on_backward_start() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (phase_ == Phase::kFinalized) extra_backward_ = true;
  if (phase_ != Phase::kArmed) return;
  begin_backward(Clock::now());
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
      if (extra_backward_) {
        throw ReductionError(fmt::format(
            "{} parameter '{}' received a gradient after the reduction of training step {} finished, from a "
            "backward that reached that step's outputs again: a second backward() after one forward, or a nested "
            "(reentrant) backward inside this one, as in reentrant activation checkpointing, that ended the "
            "reduction early. Sum the losses and call backward() once, run the earlier backward passes under "
            "no_sync() so that only the last one reduces, or use non-reentrant checkpointing.",
            rank_prefix(), names[index], step_));
      }
      throw ReductionError(fmt::format(
          "{} parameter '{}' received a gradient from a backward whose forward did not run through the wrapper: the "
          "gradients of training step {} were already reduced and no output of a later forward through the wrapper "
          "was reached. Run the forward as model(x), not model.module()->forward(x) or a submodule called "
          "directly (for a forward that must not be reduced use no_sync()). A nested (reentrant) backward, as in "
          "reentrant activation checkpointing, ends the reduction early the same way: use non-reentrant "
          "checkpointing.",
          rank_prefix(), names[index], step_));
    case Phase::kArmed:
      begin_backward(start);
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
    detail::copy_scaled(view, grad, scale_value_, scale_);
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
  // Launch strictly in bucket order, so every rank issues the same sequence, and only
  // after this section's header matched on every rank.
  if (next_to_launch_ < buckets_.size() && buckets_[next_to_launch_]->ready()) verify_reduction_header();
  if (!header_verified_) return;
  while (next_to_launch_ < buckets_.size() && buckets_[next_to_launch_]->ready()) {
    if (comm_hook_) {
      run_hook(next_to_launch_);
    } else {
      detail::Bucket& bucket = *buckets_[next_to_launch_];
      bucket.work() = process_group->allreduce(bucket.comm_tensor());
    }
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
  std::fill(futures_.begin(), futures_.end(), nullptr);
  hook_failed_bucket_ = -1;
  next_to_launch_ = 0;
  finalize_queued_ = false;
  pending_error_.clear();
  header_verified_ = false;
  header_work_.reset();
  flags_work_.reset();
  interrupted_cause_.clear();
}

std::string Reducer::Impl::ranks_with(const std::vector<uint8_t>& statuses, uint8_t status) const {
  std::string out;
  for (int r = 0; r < world_size_; ++r) {
    if (statuses[r] == status) out += fmt::format("{}{}", out.empty() ? "" : ",", r);
  }
  return out;
}

void Reducer::Impl::write_status(uint8_t* row, uint8_t status) const {
  const size_t n = parameters.size();
  row[n] = status;
  const int32_t bucket = status == kHookError ? hook_failed_bucket_ : -1;
  std::memcpy(row + n + 1, &bucket, sizeof(bucket));
}

int32_t Reducer::Impl::failed_bucket_of(const uint8_t* status) {
  int32_t bucket = -1;
  std::memcpy(&bucket, status + 1, sizeof(bucket));
  return bucket;
}

std::string Reducer::Impl::describe_failures(const std::vector<uint8_t>& statuses, const uint8_t* rows,
                                             size_t n) const {
  const std::string abandoned = ranks_with(statuses, kAbandoned);
  const std::string failed = ranks_with(statuses, kLocalError);
  std::string who;
  auto add = [&who](const std::string& part) { who += (who.empty() ? "" : ", and ") + part; };
  if (!abandoned.empty()) {
    add(fmt::format("the backward of rank(s) {} was interrupted (an exception during backward, or a timeout)",
                    abandoned));
  }
  if (!failed.empty()) add(fmt::format("rank(s) {} found an error in their backward (their own message names it)", failed));
  for (int r = 0; r < world_size_; ++r) {
    if (statuses[static_cast<size_t>(r)] != kHookError) continue;
    const int32_t bucket = failed_bucket_of(rows + r * (n + kStatusBytes) + n);
    add(fmt::format("rank {}'s communication hook '{}' failed on bucket {}{} (that rank's message has the exception)",
                    r, comm_hook_ ? comm_hook_->name() : "?", bucket,
                    bucket >= 0 && static_cast<size_t>(bucket) < buckets_.size()
                        ? fmt::format(" ({})", names_of(buckets_[static_cast<size_t>(bucket)]->members()))
                        : std::string()));
  }
  return who;
}

std::chrono::milliseconds Reducer::Impl::hook_wait_timeout() const {
  return comm_device_.is_cuda() ? Work::kNoTimeout : timeout();
}

void Reducer::Impl::record_hook_failure(size_t b, int64_t iteration, const std::string& what) {
  // The status names the hook only when its failure is the error this rank reports.
  if (pending_error_.empty()) hook_failed_bucket_ = static_cast<int32_t>(b);
  record_error(fmt::format(
      "{} communication hook '{}' failed on bucket {} ({}) in iteration {}: {}. The gradients of this step are not "
      "averaged on any rank.",
      rank_prefix(), comm_hook_->name(), b, names_of(buckets_[b]->members()), iteration, what));
}

void Reducer::Impl::run_hook(size_t b) {
  detail::Bucket& bucket = *buckets_[b];
  // A gradient reduced in place is its bucket's buffer (flattened): no copy in or out.
  const at::Tensor buffer = bucket.comm_tensor().view({-1});
  GradBucket grad_bucket(b, b + 1 == buckets_.size(), buffer, bucket_names_[b], bucket_shapes_[b],
                         *hook_group_, iteration_);
  const int64_t issued = hook_group_->collectives();
  try {
    futures_[b] = comm_hook_->run(grad_bucket);
    if (!futures_[b]) throw InvalidArgumentError("it returned a null future");
    return;
  } catch (const std::exception& e) {
    record_hook_failure(b, iteration_, e.what());
  }
  futures_[b] = CommFuture::ready(buffer);
  if (hook_group_->collectives() != issued) return; // cannot be paired again: see docs/semantics.md
  // It issued nothing: the peers' hooks (which may not have thrown) issued this bucket's
  // collectives, and the same hook on zeros issues the same ones.
  at::Tensor(buffer).zero_();
  try {
    auto again = comm_hook_->run(grad_bucket);
    if (again) futures_[b] = std::move(again);
  } catch (const std::exception&) {
    // It fails on zeros too: most likely on every rank alike, which keeps them paired.
  }
}

void Reducer::Impl::complete_hook_futures(int64_t iteration, bool interrupted) {
  // One deadline for the whole section: a peer that never completes it costs one timeout,
  // not one per bucket (MPI completes in order, so every later wait would run out too).
  const bool on_stream = comm_device_.is_cuda();
  const auto limit = timeout();
  const bool bounded = !on_stream && limit < std::chrono::hours(24 * 365);
  const auto deadline = bounded ? Clock::now() + limit : Clock::time_point::max();
  auto remaining = [&]() -> std::chrono::milliseconds {
    if (!bounded) return hook_wait_timeout();
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return std::max(left, std::chrono::milliseconds(1));
  };
  // A failure of the hook is recorded (or, for an interrupted section, only logged: that
  // step is not averaged anyway); the group's own failure ends the wait.
  auto hook_failed = [&](size_t b, const std::string& what) {
    if (interrupted) {
      detail::log(detail::LogLevel::kWarn, rank_,
                  "communication hook '{}' failed on bucket {} while completing an interrupted backward: {}",
                  comm_hook_->name(), b, what);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    record_hook_failure(b, iteration, what);
  };
  // Advance first: each bucket's next collective is issued before the host waits for the
  // last step of any.
  for (size_t b = 0; b < futures_.size(); ++b) {
    if (!futures_[b]) continue;
    try {
      futures_[b]->advance(remaining());
    } catch (const CommError&) {
      throw; // the group failed: not the hook's doing
    } catch (const std::exception& e) {
      hook_failed(b, e.what());
      futures_[b] = CommFuture::ready(buckets_[b]->comm_tensor().view({-1}));
    }
  }
  for (size_t b = 0; b < futures_.size(); ++b) {
    if (!futures_[b]) continue;
    detail::Bucket& bucket = *buckets_[b];
    std::string problem;
    try {
      at::Tensor value = futures_[b]->wait(remaining());
      const at::Tensor flat = bucket.comm_tensor().view({-1});
      if (!value.defined() || value.numel() != flat.numel() || value.scalar_type() != flat.scalar_type() ||
          value.device() != flat.device()) {
        problem = value.defined()
                      ? fmt::format("its result has {} elements of {} on {}; the bucket has {} of {} on {}",
                                    value.numel(), c10::toString(value.scalar_type()), value.device().str(),
                                    flat.numel(), c10::toString(flat.scalar_type()), flat.device().str())
                      : "its result is an undefined tensor";
      } else if (!value.is_same(flat)) {
        flat.copy_(value.reshape({-1}));
      }
    } catch (const CommError&) {
      throw;
    } catch (const std::exception& e) {
      problem = e.what();
    }
    if (!problem.empty()) hook_failed(b, problem);
  }
}

void Reducer::Impl::issue_flags(const std::vector<char>& local_used, bool read_later) {
  const size_t n = parameters.size();
  const uint8_t status = pending_error_.empty() ? kOk : hook_failed_bucket_ >= 0 ? kHookError : kLocalError;
  if (read_later) {
    at::Tensor flags = at::ones({static_cast<int64_t>(n + kStatusBytes)}, at::kByte);
    write_status(flags.data_ptr<uint8_t>(), kOk);
    flags_work_ = gather_deferred(PendingRead::Kind::kFlags, to_comm_device(flags));
    stats.collectives += 1;
    stats.deferred_flag_reads += 1;
  } else if (world_size_ > 1) {
    uint8_t* flags = used_local_host_.data_ptr<uint8_t>();
    std::copy(local_used.begin(), local_used.end(), flags);
    write_status(flags, status);
    if (!used_local_.is_same(used_local_host_)) used_local_.copy_(used_local_host_);
    flags_work_ = process_group->allgather(used_all_rows_, used_local_);
    stats.collectives += 1;
  }
}

void Reducer::Impl::finalize() {
  const auto start = Clock::now();
  std::unique_lock<std::mutex> lock(mutex_);
  // A stale callback of an abandoned backward, or a section whose header failed (the
  // error is already on its way out of backward()).
  if (phase_ != Phase::kBackward || (!header_verified_ && !header_work_)) return;
  verify_reduction_header();
  const int64_t iteration = iteration_;
  const size_t n = parameters.size();
  // Sweep: whatever got no gradient contributes zeros (or its no_sync accumulation).
  for (size_t i = 0; i < n; ++i) {
    if (!marked_[i]) mark_without_hook(i);
  }
  launch_ready_buckets();
  DDP_CHECK_EQ(next_to_launch_, buckets_.size());

  // A parameter that had a gradient last step and has none now: a changed graph, or a
  // parameter cast, moved or replaced since (its hook is gone). Check it now, so that such
  // a change is an error on every rank in this very step, before any rank writes averaged
  // gradients, and re-check the module at the next forward.
  for (size_t i = 0; i < n; ++i) {
    if (last_local_used_[i] && !local_used_[i]) {
      check_due_ = true;
      break;
    }
  }
  if (check_due_) {
    try {
      check_parameters_unchanged();
      if (module_check) {
        full_check_this_forward = true;
        module_check();
      }
    } catch (const ReductionError& e) {
      record_error(e.what());
    }
  }
  // This backward's use becomes the reported one; local_used_ starts over.
  last_local_used_.swap(local_used_);
  std::fill(local_used_.begin(), local_used_.end(), 0);
  const std::vector<char>& local_used = last_local_used_;
  // A Join shadow uses no parameter by design: not a changed static graph.
  if (options.static_graph && learned_static_ && !shadowing_) {
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
  // Deferred step check: the host reads this backward's flags later (drain_reads), unless
  // it needs them now: this rank left a parameter without a gradient (whether another
  // rank used it decides whether its .grad is written), the first iteration (bucket order,
  // static graph), or this rank's own error (every rank must see it in this step).
  const bool used_everything =
      std::all_of(local_used.begin(), local_used.end(), [](char used) { return used != 0; });
  auto can_read_later = [&] {
    return deferred_ && world_size_ > 1 && used_everything && iteration > 0 && pending_error_.empty() &&
           (!options.static_graph || learned_static_);
  };
  bool read_later = can_read_later();
  // Every section ends with the used flags and this rank's status, so that an error on
  // one rank is an error on every rank, never a silent difference. With a hook, after its
  // futures: its continuations issue collectives, and a failure there is a status too.
  if (!comm_hook_) issue_flags(local_used, read_later);
  lock.unlock();

  // Wait without holding the lock: no hook can fire now, and a collective must never
  // run under a lock.
  const auto wait_start = Clock::now();
  std::exception_ptr failure;
  if (comm_hook_) {
    try {
      complete_hook_futures(iteration);
    } catch (...) {
      failure = std::current_exception();
    }
    lock.lock();
    read_later = can_read_later();
    if (!failure) {
      try {
        issue_flags(local_used, read_later);
      } catch (...) {
        failure = std::current_exception();
      }
    }
    stats.hook_bytes_per_iteration = hook_group_->take_bytes();
    lock.unlock();
  }
  try {
    for (size_t b = 0; b < buckets_.size() && !comm_hook_; ++b) {
      Work& work = *buckets_[b]->work();
      if (read_later) {
        wait_ordered(work); // on CUDA a stream wait: the copies back below follow it on the GPU
      } else {
        work.wait(timeout());
      }
      // A collective waited for on the stream only may not have finished yet: its end is
      // not known on the host, so the timeline leaves it out.
      if (timeline.enabled() && work.is_completed()) {
        timeline.record(Timeline::Kind::kCollective, static_cast<int64_t>(b), iteration, work.start_time(),
                        work.end_time());
      }
    }
    if (flags_work_ && !read_later) {
      flags_work_->wait(timeout());
      timeline.record(Timeline::Kind::kUsedFlags, -1, iteration, flags_work_->start_time(), flags_work_->end_time());
    }
  } catch (...) {
    failure = std::current_exception();
  }
  const auto wait_end = Clock::now();

  lock.lock();
  if (failure) {
    // Left in kBackward: the next forward completes this section with the other ranks
    // (settle_interrupted_backward) or reports that they are out of step.
    interrupted_cause_ = "a collective of this backward timed out";
    // Deferred: a header that has arrived may say why (a peer out of step, or finished).
    if (deferred_) {
      try {
        drain_reads(/*block=*/false);
      } catch (const ReductionError&) {
        throw;
      } catch (...) {
      }
    }
    std::rethrow_exception(failure);
  }
  std::vector<int64_t>& used_by = last_used_by_;
  std::vector<uint8_t>& statuses = statuses_; // sized at construction: no allocation per step
  if (world_size_ == 1) {
    for (size_t i = 0; i < n; ++i) used_by[i] = local_used[i];
    statuses[0] = pending_error_.empty() ? kOk : kLocalError;
  } else if (read_later) {
    // This rank used every parameter, so each gets the average; the ranks' statuses and
    // the report wait for drain_reads.
    std::fill(statuses.begin(), statuses.end(), kOk);
  } else {
    if (!used_all_.is_same(used_all_host_)) used_all_host_.copy_(used_all_);
    const uint8_t* flags = used_all_host_.data_ptr<uint8_t>();
    std::fill(used_by.begin(), used_by.end(), 0);
    for (int r = 0; r < world_size_; ++r) {
      const uint8_t* row = flags + r * (n + kStatusBytes);
      for (size_t i = 0; i < n; ++i) used_by[i] += row[i];
      statuses[r] = row[n];
    }
  }
  if (options.static_graph && learned_static_ && !read_later) used_by = static_used_by_;
  const bool all_ok = std::all_of(statuses.begin(), statuses.end(), [](uint8_t s) { return s == kOk; });

  // Write the averages into .grad; a parameter no rank used keeps its .grad untouched.
  if (all_ok) {
    for (size_t i = 0; i < n; ++i) {
      if (!read_later && used_by[i] == 0) continue;
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
  if (options.static_graph && !learned_static_) {
    static_local_used_ = local_used;
    static_used_by_ = used_by;
    learned_static_ = true;
  }
  if (iteration == 0) {
    // Parameters that never fired go last, in reverse registration order.
    std::vector<char> seen(n, 0);
    for (size_t i : ready_order_) seen[i] = 1;
    for (size_t i = n; i-- > 0;) {
      if (!seen[i]) ready_order_.push_back(i);
    }
    // Every rank rebuilds its buckets from rank 0's order at the next forward. The order
    // travels inside this section, after its status exchange showed every rank in step.
    if (all_ok) {
      at::Tensor order = at::empty({static_cast<int64_t>(n)}, at::kLong);
      auto* data = order.data_ptr<int64_t>();
      for (size_t k = 0; k < n; ++k) data[k] = static_cast<int64_t>(ready_order_[k]);
      if (world_size_ > 1) {
        at::Tensor on_device = order.to(comm_device_);
        stats.collectives += 1;
        lock.unlock();
        std::exception_ptr order_failure;
        try {
          process_group->broadcast(on_device, 0)->wait(timeout());
        } catch (...) {
          order_failure = std::current_exception();
        }
        lock.lock();
        if (order_failure) {
          broken_ = fmt::format("{} the first iteration's bucket order could not be shared: the ranks are out of "
                                "step; restart from the last checkpoint.", rank_prefix());
          std::rethrow_exception(order_failure);
        }
        order = on_device.cpu();
        data = order.data_ptr<int64_t>();
      }
      rebuild_order_.assign(data, data + n);
    }
  }
  if (!read_later) {
    used_by_iteration_ = iteration;
    report_unused(used_by, world_size_ > 1 ? used_all_host_.data_ptr<uint8_t>() : nullptr, local_used, iteration);
  }

  const auto end = Clock::now();
  stats.iterations += 1;
  stats.finalize_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count();
  stats.finalize_wait_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(wait_end - wait_start).count();
  timeline.record(Timeline::Kind::kFinalizeWait, -1, iteration, wait_start, wait_end);
  timeline.record(Timeline::Kind::kFinalize, -1, iteration, start, end);
  timeline.record(Timeline::Kind::kBackward, -1, iteration, backward_start_, end);

  std::string error = std::move(pending_error_);
  const int64_t step = step_;
  reset_iteration();
  phase_ = Phase::kFinalized;
  iteration_ += 1;
  if (!error.empty()) {
    // Deferred: the other ranks read this rank's status only after writing this step's
    // gradients, and then stop; so does this one.
    if (deferred_ && world_size_ > 1) {
      broken_ = error + " With the deferred step check (the default on a CUDA process group) the other ranks learn "
                        "of it after writing this step's gradients, so the reducer stops on every rank: restart from "
                        "the last checkpoint (DDP_STEP_CHECK=strict keeps such a step recoverable).";
      throw ReductionError(broken_);
    }
    throw ReductionError(error);
  }
  if (!all_ok) {
    const std::string who = describe_failures(statuses, used_all_host_.data_ptr<uint8_t>(), n);
    std::string message = fmt::format(
        "{} the gradients of training step {} are not averaged: {}. No rank wrote averaged gradients for this step "
        "(gradients reduced in place or as bucket views hold partial sums): zero the gradients and go on with the "
        "next batch; the ranks are still in step.",
        rank_prefix(), step, who);
    if (deferred_) {
      // The failed rank stops (deferred step check), so this one cannot go on either.
      broken_ = fmt::format("{} the gradients of training step {} are not averaged: {}. With the deferred step check "
                            "that rank stops, so the reducer stops on every rank: restart from the last checkpoint.",
                            rank_prefix(), step, who);
      throw ReductionError(broken_);
    }
    throw ReductionError(message);
  }
}

void Reducer::Impl::report_unused(const std::vector<int64_t>& used_by, const uint8_t* flags,
                                  const std::vector<char>& local_used, int64_t iteration) {
  const size_t n = parameters.size();
  std::vector<size_t> global;
  std::vector<size_t> partial;
  for (size_t i = 0; i < n; ++i) {
    if (used_by[i] == 0) global.push_back(i);
    else if (used_by[i] < world_size_) partial.push_back(i);
  }
  std::vector<size_t> local;
  for (size_t i = 0; i < n; ++i) {
    if (!local_used[i]) local.push_back(i);
  }
  if (detail::debug_level() >= detail::DebugLevel::kDetail) {
    detail::log(detail::LogLevel::kInfo, rank_, "iteration {}: unused on every rank: [{}]; unused on this rank: [{}]",
                iteration, names_of(global), names_of(local));
  }
  if (global.empty() && partial.empty()) return;
  // Which ranks skipped each partially used parameter (the allgathered flags say).
  std::string partial_text;
  if (!partial.empty() && world_size_ > 1 && flags != nullptr) {
    for (size_t k = 0; k < partial.size(); ++k) {
      std::string ranks;
      for (int r = 0; r < world_size_; ++r) {
        if (!flags[r * (n + kStatusBytes) + partial[k]]) ranks += fmt::format("{}{}", ranks.empty() ? "" : ",", r);
      }
      partial_text += fmt::format("{}{} (ranks {})", k ? ", " : "", names[partial[k]], ranks);
    }
  }
  std::string key = names_of(global) + "|" + partial_text;
  if (reported_sets_.count(key) || reported_sets_.size() >= kMaxReportedSets) return;
  reported_sets_.insert(key);
  if (rank_ != 0) return; // every rank knows the same sets; one report is enough
  std::string message = fmt::format("iteration {}: parameters that received no gradient", iteration);
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
