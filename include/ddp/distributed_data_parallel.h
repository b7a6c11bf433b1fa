// ddp::DistributedDataParallel<Module>: a LibTorch module that wraps a torch::nn::Module
// so that, after each loss.backward(), every rank holds the gradients averaged over all
// ranks. It is used like the module it wraps:
//
//   ddp::DistributedDataParallel model(net, pg);          // a holder, like torch::nn::Linear
//   torch::optim::SGD opt(model->parameters(), 0.1);       // the wrapped module's tensors
//   auto loss = loss_fn(model(x), y); loss.backward();     // averaged when backward returns
//   model->eval();                                         // evaluation: no collective
//   torch::save(model, "model.pt");                        // loads into an unwrapped Net
//
// Names: the wrapper's parameters, buffers and submodules carry the wrapped module's own
// names ("fc1.weight", not PyTorch's "module.fc1.weight"), so state saved from a wrapped
// model loads into an unwrapped one and the other way round.
#pragma once

#include <ATen/core/grad_mode.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <ostream>
#include <string>
#include <utility>

#include <ddp/collectives.h>
#include <ddp/error.h>
#include <ddp/no_sync_guard.h>
#include <ddp/options.h>
#include <ddp/output_tensors.h>
#include <ddp/overlapped_optimizer.h>
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
// Options::init_sync(false): instead of broadcasting, compares a checksum of every
// parameter and buffer across ranks (one allgather); ModelMismatchError on every rank,
// naming the first tensor that differs and the ranks, when the ranks did not start alike.
void verify_module_state(ProcessGroup& process_group, const torch::nn::Module& module);
// Throws ReductionError naming the parameters when the module now holds trainable
// parameters that `reducer` does not reduce (replace_module, a new or unfrozen parameter
// after wrapping): their gradients would silently stay local.
// Counted in ReducerStats::step_check_ns. Walks the whole module only at the first
// forward, after a step in which a parameter lost its gradient, and every 64 steps; the
// frozen parameters are checked every time.
void check_module_parameters(Reducer& reducer, const torch::nn::Module& module);
// Lets the reducer run check_module_parameters from its end-of-backward callback.
void watch_module(Reducer& reducer, std::weak_ptr<torch::nn::Module> module);
// Makes `wrapper` show `module`'s own parameters, buffers and submodules under the same
// names (the same tensors and modules, not copies).
void mirror_module(torch::nn::Module& wrapper, const torch::nn::Module& module);
// `options` with the weight of every torch::nn::Embedding and EmbeddingBag built with
// sparse(true) (and requiring grad) added to expect_sparse_gradients, as PyTorch's DDP
// finds them: their gradients are sparse, and the reducer must know before backward.
Options with_sparse_embeddings(const torch::nn::Module& module, Options options);
// The errors of the calls that would break the reducer's hooks after wrapping.
[[noreturn]] void throw_to_after_wrapping(const Reducer& reducer);
[[noreturn]] void throw_load_after_wrapping(const Reducer& reducer);
[[noreturn]] void throw_clone(const Reducer& reducer);
// "ddp::DistributedDataParallel(world_size=2, backend=mpi, bucket_cap_mb=25, ...)".
void print_wrapper(std::ostream& stream, const Reducer& reducer);
} // namespace detail

// `Wrapped`, not `Module`: inside a class derived from torch::nn::Module that name is the
// base class.
template <typename Wrapped>
class DistributedDataParallelImpl : public torch::nn::Module {
 public:
  // Collective: verifies that every rank wraps the same model with the same options
  // (ModelMismatchError otherwise), takes rank 0's parameters and buffers (or, with
  // Options::init_sync(false), checks that every rank already has them), and builds the
  // reducer. Move the module to its device and load any checkpoint before wrapping.
  DistributedDataParallelImpl(std::shared_ptr<Wrapped> module, std::shared_ptr<ProcessGroup> process_group,
                              Options options = {})
      : torch::nn::Module("ddp::DistributedDataParallel"), module_(std::move(module)) {
    if (!module_) {
      throw InvalidArgumentError("ddp::DistributedDataParallel: the module is null; pass a constructed module");
    }
    if (!process_group) {
      throw InvalidArgumentError(
          "ddp::DistributedDataParallel: the process group is null; create one with ddp::init_process_group()");
    }
    // The reducer's one construction collective checks options, every parameter and
    // every buffer across ranks; only then is anything broadcast.
    reducer_ = std::make_unique<Reducer>(detail::named_parameters(*module_), process_group,
                                         detail::with_sparse_embeddings(*module_, std::move(options)),
                                         detail::named_buffers(*module_));
    if (reducer_->options().init_sync()) {
      detail::broadcast_module_state(*process_group, *module_);
    } else {
      detail::verify_module_state(*process_group, *module_);
    }
    detail::watch_module(*reducer_, std::static_pointer_cast<torch::nn::Module>(module_));
    detail::mirror_module(*this, *module_);
  }

  template <typename Impl = Wrapped>
  DistributedDataParallelImpl(torch::nn::ModuleHolder<Impl> holder, std::shared_ptr<ProcessGroup> process_group,
                              Options options = {})
      : DistributedDataParallelImpl(holder.ptr(), std::move(process_group), std::move(options)) {}

  // Runs the module's forward with any arguments and returns its result unchanged.
  // A training forward (grad mode on and the wrapper in train mode) starts a step: the
  // reducer checks the previous one and arms its hooks for the coming backward; with
  // broadcast_buffers it first takes rank 0's buffers, so every rank must run the same
  // training forwards, as in PyTorch. Any other forward (under torch::NoGradGuard, or
  // after ->eval()) is evaluation: no collective and no reducer state, so one rank may
  // evaluate alone, between a training forward and its backward too. A backward through
  // an evaluation forward is an error that says so; the next training forward takes rank
  // 0's buffers again.
  template <typename... Args>
  auto forward(Args&&... args) {
    if (!at::GradMode::is_enabled() || !is_training()) {
      return module_->forward(std::forward<Args>(args)...);
    }
    reducer_->prepare_for_forward();
    detail::check_module_parameters(*reducer_, *module_);
    if (reducer_->options().broadcast_buffers() && reducer_->process_group()->size() > 1) {
      auto buffers = detail::buffers_of(*module_);
      if (!buffers.empty()) reducer_->sync_module_state(buffers);
    }
    auto result = module_->forward(std::forward<Args>(args)...);
    reducer_->prepare_for_backward(output_tensors(result));
    return result;
  }

  // While the returned guard lives, backward passes accumulate gradients locally;
  // the first synchronised backward after it reduces the accumulated sum.
  [[nodiscard]] NoSyncGuard no_sync() { return NoSyncGuard(*reducer_); }

  // Replaces each bucket's all-reduce with `hook` (Reducer::register_comm_hook): once,
  // before the first forward, on every rank.
  void register_comm_hook(std::shared_ptr<CommHook> hook) { reducer_->register_comm_hook(std::move(hook)); }

  // Updates each bucket's parameters with `optimizer` as soon as the bucket is reduced,
  // during the backward (include/ddp/overlapped_optimizer.h): call the returned object's
  // zero_grad() and step() in the loop instead of the optimizer's. Local, no collective.
  std::shared_ptr<OverlappedOptimizer> overlap_optimizer(std::shared_ptr<torch::optim::Optimizer> optimizer,
                                                         OverlapOptions options = {}) {
    return std::make_shared<OverlappedOptimizer>(*reducer_, std::move(optimizer), std::move(options));
  }

  const std::shared_ptr<Wrapped>& module() const { return module_; }
  Reducer& reducer() { return *reducer_; }
  const Reducer& reducer() const { return *reducer_; }

  // torch::nn::Module: train()/eval() reach the wrapped module itself, not only the
  // submodules the wrapper shows, and the mode is the wrapped module's (a submodule the
  // user put in eval mode before wrapping stays so).
  void train(bool on = true) override { module_->train(on); }
  bool is_training() const noexcept override { return module_->is_training(); }

  // The wrapped module's own format and names: torch::save(model, path) writes what
  // torch::save(net, path) would.
  void save(torch::serialize::OutputArchive& archive) const override { module_->save(archive); }
  // Loading into a wrapped model would change this rank's parameters behind the other
  // ranks' backs: load into the module before wrapping (the construction then hands rank
  // 0's state to every rank).
  void load(torch::serialize::InputArchive&) override { detail::throw_load_after_wrapping(*reducer_); }

  // The reducer's hooks and buckets are bound to each parameter's device and dtype.
  void to(torch::Device, torch::Dtype, bool = false) override { detail::throw_to_after_wrapping(*reducer_); }
  void to(torch::Dtype, bool = false) override { detail::throw_to_after_wrapping(*reducer_); }
  void to(torch::Device, bool = false) override { detail::throw_to_after_wrapping(*reducer_); }
  std::shared_ptr<torch::nn::Module> clone(const std::optional<torch::Device>& = std::nullopt) const override {
    detail::throw_clone(*reducer_);
  }

  void pretty_print(std::ostream& stream) const override { detail::print_wrapper(stream, *reducer_); }

 private:
  std::shared_ptr<Wrapped> module_;
  std::unique_ptr<Reducer> reducer_;
};

// The holder, as TORCH_MODULE would declare it: `model(x)`, `model->parameters()`,
// `model->eval()`, `torch::save(model, path)`; copies share one wrapper.
template <typename Module>
class DistributedDataParallel : public torch::nn::ModuleHolder<DistributedDataParallelImpl<Module>> {
 public:
  using torch::nn::ModuleHolder<DistributedDataParallelImpl<Module>>::ModuleHolder;

  // ModuleHolder's own operator() cannot see a forward that is a template (it would
  // return void): this one calls it with any arguments and returns the module's result.
  template <typename... Args>
  auto operator()(Args&&... args) {
    return this->get()->forward(std::forward<Args>(args)...);
  }
};

template <typename Module>
DistributedDataParallel(std::shared_ptr<Module>, std::shared_ptr<ProcessGroup>, Options = {})
    -> DistributedDataParallel<Module>;
template <typename Impl>
DistributedDataParallel(torch::nn::ModuleHolder<Impl>, std::shared_ptr<ProcessGroup>, Options = {})
    -> DistributedDataParallel<Impl>;

} // namespace ddp
