#include "reducer/hook_process_group.h"

#include <utility>

namespace ddp::detail {

HookProcessGroup::HookProcessGroup(std::shared_ptr<ProcessGroup> inner, bool reproducible)
    : inner_(std::move(inner)), reproducible_(reproducible) {
  set_timeout(inner_->timeout());
}

void HookProcessGroup::count(const at::Tensor& tensor) {
  collectives_ += 1;
  if (tensor.defined()) bytes_ += static_cast<int64_t>(tensor.nbytes());
}

std::shared_ptr<Work> HookProcessGroup::keep(const char* op, const at::Tensor& tensor, std::shared_ptr<Work> work) {
  if (work) issued_.push_back({bucket_, op, tensor.defined() ? static_cast<int64_t>(tensor.nbytes()) : 0, work});
  return work;
}

std::vector<HookProcessGroup::Issued> HookProcessGroup::take_issued() {
  std::vector<Issued> out;
  out.swap(issued_);
  return out;
}

std::shared_ptr<Work> HookProcessGroup::allreduce(at::Tensor tensor) {
  if (reproducible_ && tensor.defined() && c10::isFloatingType(tensor.scalar_type())) {
    const c10::ScalarType type = tensor.scalar_type();
    return allreduce_ordered(std::move(tensor), OrderedReduce{type, type, 1});
  }
  count(tensor);
  return keep("allreduce", tensor, inner_->allreduce(tensor));
}

std::shared_ptr<Work> HookProcessGroup::allreduce_ordered(at::Tensor tensor, OrderedReduce how) {
  count(tensor);
  return keep("allreduce_ordered", tensor, inner_->allreduce_ordered(tensor, how));
}

std::shared_ptr<Work> HookProcessGroup::broadcast(at::Tensor tensor, int root) {
  count(tensor);
  return keep("broadcast", tensor, inner_->broadcast(tensor, root));
}

std::shared_ptr<Work> HookProcessGroup::allgather(std::vector<at::Tensor> outputs, at::Tensor input) {
  count(input);
  return keep("allgather", input, inner_->allgather(std::move(outputs), input));
}

void HookProcessGroup::barrier() {
  collectives_ += 1;
  inner_->barrier();
}

int64_t HookProcessGroup::take_bytes() {
  const int64_t bytes = bytes_;
  bytes_ = 0;
  return bytes;
}

} // namespace ddp::detail
