// The non-template part of DistributedDataParallel: reading a module's parameters and
// buffers, broadcasting its state, and checking that its parameters are still the ones
// the reducer hooks.
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <chrono>

#include <ddp/collectives.h>
#include <ddp/distributed_data_parallel.h>
#include <ddp/error.h>

#include "reducer/reducer_impl.h"

namespace ddp::detail {

Reducer::NamedParameters named_parameters(const torch::nn::Module& module) {
  Reducer::NamedParameters out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

Reducer::NamedParameters named_buffers(const torch::nn::Module& module) {
  Reducer::NamedParameters out;
  for (const auto& item : module.named_buffers(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

std::vector<at::Tensor> buffers_of(const torch::nn::Module& module) {
  std::vector<at::Tensor> out;
  for (const auto& b : module.buffers(/*recurse=*/true)) {
    if (b.defined()) out.push_back(b);
  }
  return out;
}

void broadcast_module_state(ProcessGroup& process_group, torch::nn::Module& module) {
  if (process_group.size() == 1) return;
  std::vector<at::Tensor> tensors;
  for (const auto& p : module.parameters(true)) tensors.push_back(p);
  for (const auto& b : module.buffers(true)) {
    if (b.defined()) tensors.push_back(b);
  }
  broadcast_coalesced(process_group, tensors, /*root=*/0);
}

void check_module_parameters(Reducer& reducer, const torch::nn::Module& module) {
  // The common case allocates one vector of handles: no names, no strings.
  const auto start = std::chrono::steady_clock::now();
  bool unchanged = true;
  for (const auto& p : module.parameters(/*recurse=*/true)) {
    if (p.requires_grad() && !reducer.manages(p)) {
      unchanged = false;
      break;
    }
  }
  reducer.impl_->stats.step_check_ns +=
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  if (unchanged) return;
  std::string names;
  int count = 0;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad() || reducer.manages(item.value())) continue;
    if (count++ < 8) names += fmt::format("{}'{}'", names.empty() ? "" : ", ", item.key());
  }
  if (count > 8) names += fmt::format(" and {} more", count - 8);
  throw ReductionError(fmt::format(
      "[ddp rank {}] the module's parameters changed after it was wrapped: {} require(s) grad but {} not reduced by "
      "this DistributedDataParallel (a submodule replaced with replace_module, a parameter registered or unfrozen "
      "after wrapping). Their gradients would stay local to each rank and the ranks would diverge. Make such "
      "changes before wrapping the module, and wrap it again after any later change.",
      reducer.process_group()->rank(), names, count == 1 ? "is" : "are"));
}

} // namespace ddp::detail
