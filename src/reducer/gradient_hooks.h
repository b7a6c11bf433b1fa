// GradientHooks: the reducer's post-hook on each parameter's gradient accumulator, the
// accumulators kept alive so that the hooks stay registered, and the graph walker that
// finds the parameters a forward's outputs cannot reach (find_unused_parameters).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "reducer/graph_walker.h"

namespace ddp::detail {

class GradientHooks {
 public:
  GradientHooks() = default;
  // Removes the hooks.
  ~GradientHooks();
  GradientHooks(const GradientHooks&) = delete;
  GradientHooks& operator=(const GradientHooks&) = delete;

  // Runs after parameter i's accumulator added `incoming` (this run's gradient, undefined
  // when none arrived) into its .grad. It can run more than once per backward: one run per
  // graph task that reaches the accumulator (a reentrant backward is a graph task of its
  // own), so `incoming` is what a later run adds to the earlier ones.
  using OnReady = std::function<void(size_t i, const at::Tensor& incoming)>;
  // Hooks every parameter. `on_ready` must stay valid until this object is destroyed.
  void install(const std::vector<at::Tensor>& parameters, const std::vector<std::string>& names, OnReady on_ready);
  // Marks in `reachable` (one flag per parameter) the parameters reachable from `outputs`;
  // returns the number of autograd nodes visited.
  size_t walk(const std::vector<at::Tensor>& outputs, std::vector<char>& reachable);
  // Removes the hooks (the destructor does too): no callback runs afterwards.
  void remove();

 private:
  // The accumulators' pointer type is shared_ptr or intrusive_ptr depending on the
  // LibTorch version.
  using AccumulatorPtr = decltype(torch::autograd::impl::grad_accumulator(std::declval<const at::Tensor&>()));
  std::vector<AccumulatorPtr> accumulators_;
  std::vector<uintptr_t> keys_;
  std::unique_ptr<GraphWalker> walker_;
};

} // namespace ddp::detail
