// ddp::Join: training on uneven inputs, as torch.distributed.algorithms.Join does for
// PyTorch's DDP. A rank that runs out of batches calls join() (or lets the Join go out of
// scope) and then *shadows* the ranks that still have data: for each of their training
// steps it runs the same collectives (the buffer broadcast, the bucket all-reduces with
// zeros, the used flags saying it used nothing), so that nobody hangs or times out and its
// zeros do not enter their averages. Every training forward under an enabled Join first
// agrees on which ranks are still active: one tiny allgather per step.
//
//   {
//     ddp::Join join(model);                  // every rank, around the same loop
//     for (auto& batch : my_shard) { ... model(x) ... backward ... optimizer.step(); }
//     join.join();                           // out of data: shadow the others
//   }                                        // (the destructor joins if you did not)
//
// When every rank has joined, all of them take the parameters and buffers of the last
// rank that was active, so they leave with the same model and the same step count, ready
// for evaluation or another epoch (a new Join). A joined rank does not step its optimizer:
// its optimizer's own state (momentum, Adam moments) is not synchronised, as in PyTorch.
// docs/semantics.md ("Uneven inputs: Join") has the protocol.
#pragma once

#include <torch/arg.h>

#include <exception>
#include <vector>

#include <ddp/distributed_data_parallel.h>

namespace ddp {

struct JoinOptions {
  // false: Join does nothing (uneven inputs then end with the "rank N finished" error).
  TORCH_ARG(bool, enable) = true;
  // Every rank raises ReductionError at the first step in which some rank has run out,
  // instead of shadowing it.
  TORCH_ARG(bool, throw_on_early_termination) = false;
  // true (PyTorch's default): gradients are divided by the world size, whatever the
  // number of ranks still active; false: by the number of active ranks.
  TORCH_ARG(bool, divide_by_initial_world_size) = true;
};

namespace detail {
// Logs a failure of the join that ~Join ran (a destructor must not throw).
void log_join_failure(const Reducer& reducer, const std::exception& error);
} // namespace detail

template <typename Module>
class Join {
 public:
  explicit Join(const DistributedDataParallel<Module>& model, JoinOptions options = {})
      : model_(model.ptr()), options_(options), exceptions_(std::uncaught_exceptions()) {
    if (options_.enable()) {
      model_->reducer().arm_join(options_.throw_on_early_termination(), options_.divide_by_initial_world_size());
    }
  }

  // Joins unless join() was called; while an exception unwinds, only disarms (the other
  // ranks learn of this rank through the section headers).
  ~Join() {
    if (done_ || !options_.enable()) return;
    if (std::uncaught_exceptions() > exceptions_) {
      model_->reducer().disarm_join();
      return;
    }
    try {
      join();
    } catch (const std::exception& e) {
      detail::log_join_failure(model_->reducer(), e);
    }
  }
  Join(const Join&) = delete;
  Join& operator=(const Join&) = delete;

  // This rank has no more batches: shadows the active ranks until every rank has joined,
  // then takes the last active rank's parameters and buffers. Collective.
  void join() {
    if (done_ || !options_.enable()) return;
    done_ = true;
    torch::nn::Module& module = *model_->module();
    std::vector<at::Tensor> state;
    for (const auto& p : module.parameters(/*recurse=*/true)) state.push_back(p);
    for (const auto& b : detail::buffers_of(module)) state.push_back(b);
    model_->reducer().join([&module] { return detail::buffers_of(module); }, state);
  }

  bool joined() const { return done_; }

 private:
  std::shared_ptr<DistributedDataParallelImpl<Module>> model_;
  JoinOptions options_;
  int exceptions_;
  bool done_ = false;
};

} // namespace ddp
