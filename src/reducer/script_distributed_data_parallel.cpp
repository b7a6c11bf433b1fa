#include <ddp/script_distributed_data_parallel.h>

#include <ATen/core/grad_mode.h>

#include <utility>

#include <ddp/collectives.h>
#include <ddp/error.h>
#include <ddp/output_tensors.h>

namespace ddp {
namespace {

Reducer::NamedParameters named_parameters(const torch::jit::Module& module) {
  Reducer::NamedParameters out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) out.emplace_back(item.name, item.value);
  return out;
}

Reducer::NamedParameters named_buffers(const torch::jit::Module& module) {
  Reducer::NamedParameters out;
  for (const auto& item : module.named_buffers(/*recurse=*/true)) out.emplace_back(item.name, item.value);
  return out;
}

std::vector<at::Tensor> defined_buffers(const torch::jit::Module& module) {
  std::vector<at::Tensor> out;
  for (const auto& b : module.buffers(/*recurse=*/true)) {
    if (b.defined()) out.push_back(b);
  }
  return out;
}

} // namespace

ScriptDistributedDataParallel::ScriptDistributedDataParallel(torch::jit::Module module,
                                                             std::shared_ptr<ProcessGroup> process_group,
                                                             Options options)
    : module_(std::move(module)) {
  if (!process_group) {
    throw InvalidArgumentError(
        "ddp::ScriptDistributedDataParallel: the process group is null; create one with ddp::init_process_group()");
  }
  reducer_ = std::make_unique<Reducer>(named_parameters(module_), process_group, std::move(options),
                                       named_buffers(module_));
  std::vector<at::Tensor> state = parameters();
  for (const auto& b : defined_buffers(module_)) state.push_back(b);
  if (process_group->size() > 1 && reducer_->options().init_sync()) {
    broadcast_coalesced(*process_group, state, /*root=*/0);
  } else if (process_group->size() > 1) {
    // The same cross-rank comparison as DistributedDataParallel's, on the named tensors.
    Reducer::NamedParameters named = named_parameters(module_);
    for (auto& item : named_buffers(module_)) named.push_back(std::move(item));
    verify_same_values(*process_group, named,
                       "Options::init_sync(false), but the ranks did not start alike: tensor",
                       "load the same TorchScript file on every rank, or leave init_sync at true so that rank 0's "
                       "state is broadcast.");
  }
}

c10::IValue ScriptDistributedDataParallel::forward(std::vector<c10::IValue> inputs) {
  if (!at::GradMode::is_enabled() || !module_.is_training()) return module_.forward(std::move(inputs));
  reducer_->prepare_for_forward();
  if (reducer_->options().broadcast_buffers() && reducer_->process_group()->size() > 1) {
    auto buffers = defined_buffers(module_);
    if (!buffers.empty()) reducer_->sync_module_state(buffers);
  }
  c10::IValue result = module_.forward(std::move(inputs));
  reducer_->prepare_for_backward(output_tensors(result));
  return result;
}

std::vector<at::Tensor> ScriptDistributedDataParallel::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& p : module_.parameters(/*recurse=*/true)) out.push_back(p);
  return out;
}

} // namespace ddp
