// ddp::OverlappedOptimizer: a torch::optim optimizer whose update of each bucket's
// parameters runs as soon as that bucket's averages are in .grad, while the later
// buckets are still being reduced, instead of after the whole backward.
//
//   auto adam = std::make_shared<torch::optim::Adam>(model->parameters(), torch::optim::AdamOptions(1e-3));
//   auto opt = model->overlap_optimizer(adam);        // or OverlappedOptimizer(model->reducer(), adam)
//   for (...) {
//     opt->zero_grad();
//     loss_fn(model(x), y).backward();                 // most parameters are updated in here
//     opt->step();                                     // the rest (parameters the reducer does not reduce)
//   }
//   torch::save(*adam, "adam.pt");                    // torch::optim::Adam's own format
//
// The contract (docs/semantics.md, "Optimizer overlapped with the backward"):
// - After each step the parameters equal, bit for bit on CPU, those the same torch::optim
//   optimizer would give stepped after backward(): the update of each parameter is the
//   optimizer's own code, run on a subset of its parameter groups. The optimizer's state,
//   parameter groups and options stay in `optimizer()`: a learning-rate scheduler over it
//   takes effect at the next step, and torch::save / torch::load of it move a checkpoint
//   between overlapped and plain training.
// - Every synchronised backward updates; a backward under no_sync() does not (step() after
//   it updates from the local gradients, as the plain optimizer would). Gradient
//   accumulation goes through no_sync(): a second synchronised backward without step()
//   in between is an error at step().
// - A parameter that got no gradient on any rank keeps its .grad, so it is skipped when
//   that is undefined, as torch::optim skips it.
// - Do not call optimizer().step() yourself: that would update the parameters twice.
// - Changing a gradient between backward() and step() (clip_grad_norm_, zero_grad) is an
//   error at step() naming the parameter: its update already ran (found by the gradient's
//   version counter and a sample of its values on CPU; a GPU gradient written through
//   .data() is not seen, so do not rely on the check there). Clipping goes through
//   OverlapOptions: clip_grad_value (exact, overlapped) or max_grad_norm (exact, two
//   phases: the norms overlap, the update waits for the last bucket).
// Supported: torch::optim::SGD (momentum, Nesterov, weight decay), Adam, AdamW, RMSprop,
// Adagrad; LBFGS and optimizers of your own are refused (their step may need every
// gradient). Not with ddp::Join (InvalidArgumentError at either end).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <memory>
#include <optional>

#include <ddp/reducer.h>

namespace ddp {

struct OverlapOptions {
  // Clamps every gradient to [-v, v] before the update, as
  // torch::nn::utils::clip_grad_value_ over the optimizer's parameters would: elementwise,
  // so bucket by bucket gives the same values. Must be > 0.
  TORCH_ARG(std::optional<double>, clip_grad_value) = std::nullopt;
  // Scales the gradients so that their total norm is at most this, exactly as
  // torch::nn::utils::clip_grad_norm_(optimizer parameters, max_grad_norm, norm_type).
  // The total norm needs every gradient, so the updates wait for step() (two phases: each
  // parameter's norm is taken as its bucket completes, the scaling and the updates run in
  // step()). Must be > 0; not with clip_grad_value.
  TORCH_ARG(std::optional<double>, max_grad_norm) = std::nullopt;
  TORCH_ARG(double, norm_type) = 2.0;
};

class OverlappedOptimizer {
 public:
  // Attaches `optimizer` to `reducer` (one per reducer; InvalidArgumentError naming the
  // problem for a null or unsupported optimizer, bad options, a second overlapped
  // optimizer, or an armed ddp::Join). Local: no collective. The parameters of `optimizer`
  // that the reducer does not reduce are updated in step().
  OverlappedOptimizer(Reducer& reducer, std::shared_ptr<torch::optim::Optimizer> optimizer,
                      OverlapOptions options = {});
  ~OverlappedOptimizer();
  OverlappedOptimizer(const OverlappedOptimizer&) = delete;
  OverlappedOptimizer& operator=(const OverlappedOptimizer&) = delete;

  // Finishes this iteration's update: every parameter of the optimizer not updated during
  // the backward (with max_grad_norm: every one, after the scaling). Throws the error of
  // an update that failed during the backward, InvalidArgumentError when a gradient
  // changed after its update or a synchronised backward came without a step() after the
  // previous one.
  void step();
  // optimizer().zero_grad(set_to_none).
  void zero_grad(bool set_to_none = true);

  torch::optim::Optimizer& optimizer() const;
  const OverlapOptions& options() const;
  // Parameters updated during the last synchronised backward, before step() was called.
  int64_t updated_in_backward() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

} // namespace ddp
