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
// The parameters of `module` that require grad, with their qualified names, in
// registration order.
Reducer::NamedParameters trainable_parameters(const torch::nn::Module& module);
// Broadcasts the module's parameters and buffers from rank 0 (coalesced).
void broadcast_module_state(ProcessGroup& process_group, torch::nn::Module& module, bool with_parameters);
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
    reducer_ = std::make_unique<Reducer>(detail::trainable_parameters(*module_), process_group, std::move(options));
    detail::broadcast_module_state(*process_group, *module_, /*with_parameters=*/true);
  }

  template <typename Impl = Module>
  DistributedDataParallel(torch::nn::ModuleHolder<Impl> holder, std::shared_ptr<ProcessGroup> process_group,
                          Options options = {})
      : DistributedDataParallel(holder.ptr(), std::move(process_group), std::move(options)) {}

  // Runs the module's forward with any arguments and returns its result unchanged.
  template <typename... Args>
  auto forward(Args&&... args) {
    reducer_->prepare_for_forward();
    if (reducer_->options().broadcast_buffers && reducer_->process_group()->size() > 1 &&
        module_->buffers().size() > 0) {
      detail::broadcast_module_state(*reducer_->process_group(), *module_, /*with_parameters=*/false);
    }
    auto result = module_->forward(std::forward<Args>(args)...);
    if (at::GradMode::is_enabled()) {
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
