// The non-template part of DistributedDataParallel: reading a module's parameters and
// broadcasting its state.
#include <torch/nn/module.h>

#include <ddp/collectives.h>
#include <ddp/distributed_data_parallel.h>

namespace ddp::detail {

Reducer::NamedParameters trainable_parameters(const torch::nn::Module& module) {
  Reducer::NamedParameters out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  }
  return out;
}

void broadcast_module_state(ProcessGroup& process_group, torch::nn::Module& module, bool with_parameters) {
  if (process_group.size() == 1) return;
  std::vector<at::Tensor> tensors;
  if (with_parameters) {
    std::vector<std::pair<std::string, at::Tensor>> buffers;
    for (const auto& item : module.named_buffers(true)) buffers.emplace_back(item.key(), item.value());
    verify_same_tensors(process_group, buffers, "buffer");
    for (const auto& p : module.parameters(true)) tensors.push_back(p);
  }
  for (const auto& b : module.buffers(true)) {
    if (b.defined()) tensors.push_back(b);
  }
  broadcast_coalesced(process_group, tensors, /*root=*/0);
}

} // namespace ddp::detail
