// ddp::DistributedDataParallel<Module>: wraps a torch::nn::Module so that, after each
// loss.backward(), every rank holds the gradients averaged over all ranks.
#pragma once

#include <ATen/core/grad_mode.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <utility>

#include <ddp/collectives.h>
#include <ddp/error.h>
#include <ddp/no_sync_guard.h>
#include <ddp/options.h>
#include <ddp/output_tensors.h>
#include <ddp/process_group.h>
#include <ddp/reducer.h>

namespace ddp {

namespace detail {
// Every parameter of `module` (frozen ones too), with its qualified name, in
// registration order.
Reducer::NamedParameters named_parameters(const torch::nn::Module& module);
// The module's buffers with their qualified names.
Reducer::NamedParameters named_buffers(const torch::nn::Module& module);
// The module's defined buffers.
std::vector<at::Tensor> buffers_of(const torch::nn::Module& module);
// Broadcasts the module's parameters and buffers from rank 0 (coalesced).
void broadcast_module_state(ProcessGroup& process_group, torch::nn::Module& module);
// Throws ReductionError naming the parameters when the module now holds trainable
// parameters that `reducer` does not reduce (replace_module, a new or unfrozen parameter
// after wrapping): their gradients would silently stay local.
// Counted in ReducerStats::step_check_ns. Walks the whole module only at the first
// forward, after a step in which a parameter lost its gradient, and every 64 steps; the
// frozen parameters are checked every time.
void check_module_parameters(Reducer& reducer, const torch::nn::Module& module);
// Lets the reducer run check_module_parameters from its end-of-backward callback.
void watch_module(Reducer& reducer, std::weak_ptr<torch::nn::Module> module);
} // namespace detail

template <typename Module>
class DistributedDataParallel {
 public:
  // Collective: verifies that every rank wraps the same model (ModelMismatchError
  // otherwise), broadcasts rank 0's parameters and buffers, and builds the reducer.
  DistributedDataParallel(std::shared_ptr<Module> module, std::shared_ptr<ProcessGroup> process_group,
                          Options options = {})
      : module_(std::move(module)) {
    if (!module_) {
      throw InvalidArgumentError("ddp::DistributedDataParallel: the module is null; pass a constructed module");
    }
    if (!process_group) {
      throw InvalidArgumentError(
          "ddp::DistributedDataParallel: the process group is null; create one with ddp::init_process_group()");
    }
    // The reducer's one construction collective checks options, every parameter and
    // every buffer across ranks; only then is anything broadcast.
    reducer_ = std::make_unique<Reducer>(detail::named_parameters(*module_), process_group, std::move(options),
                                         detail::named_buffers(*module_));
    detail::broadcast_module_state(*process_group, *module_);
    detail::watch_module(*reducer_, std::static_pointer_cast<torch::nn::Module>(module_));
  }

  template <typename Impl = Module>
  DistributedDataParallel(torch::nn::ModuleHolder<Impl> holder, std::shared_ptr<ProcessGroup> process_group,
                          Options options = {})
      : DistributedDataParallel(holder.ptr(), std::move(process_group), std::move(options)) {}

  // Runs the module's forward with any arguments and returns its result unchanged.
  // A training forward (grad mode on) starts a step: the reducer checks the previous one
  // and arms its hooks for the coming backward. A forward under torch::NoGradGuard leaves
  // the reducer's step alone, so it may run between a training forward and its backward.
  // With broadcast_buffers, every forward first takes rank 0's buffers (all ranks must
  // then run the same forwards, as in PyTorch).
  template <typename... Args>
  auto forward(Args&&... args) {
    const bool training = at::GradMode::is_enabled();
    if (training) {
      reducer_->prepare_for_forward();
      detail::check_module_parameters(*reducer_, *module_);
    }
    if (reducer_->options().broadcast_buffers && reducer_->process_group()->size() > 1) {
      auto buffers = detail::buffers_of(*module_);
      if (!buffers.empty()) reducer_->sync_module_state(buffers);
    }
    auto result = module_->forward(std::forward<Args>(args)...);
    if (training) {
      reducer_->prepare_for_backward(output_tensors(result));
    }
    return result;
  }

  template <typename... Args>
  auto operator()(Args&&... args) {
    return forward(std::forward<Args>(args)...);
  }

  // While the returned guard lives, backward passes accumulate gradients locally;
  // the first synchronised backward after it reduces the accumulated sum.
  [[nodiscard]] NoSyncGuard no_sync() { return NoSyncGuard(*reducer_); }

  // Replaces each bucket's all-reduce with `hook` (Reducer::register_comm_hook): once,
  // before the first forward, on every rank.
  void register_comm_hook(std::shared_ptr<CommHook> hook) { reducer_->register_comm_hook(std::move(hook)); }

  const std::shared_ptr<Module>& module() const { return module_; }
  Reducer& reducer() { return *reducer_; }
  const Reducer& reducer() const { return *reducer_; }

 private:
  std::shared_ptr<Module> module_;
  std::unique_ptr<Reducer> reducer_;
};

template <typename Impl>
DistributedDataParallel(torch::nn::ModuleHolder<Impl>, std::shared_ptr<ProcessGroup>, Options = {})
    -> DistributedDataParallel<Impl>;

} // namespace ddp
