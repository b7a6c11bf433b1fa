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

  // Hooks every parameter: `on_ready(i)` runs when parameter i's gradient is accumulated.
  // `on_ready` must stay valid until this object is destroyed.
  void install(const std::vector<at::Tensor>& parameters, const std::vector<std::string>& names,
               std::function<void(size_t)> on_ready);
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
