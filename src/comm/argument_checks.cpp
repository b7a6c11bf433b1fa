#include "comm/argument_checks.h"

#include <fmt/format.h>

#include <ddp/error.h>

namespace ddp::detail {

void check_tensor(int rank, const char* op, const at::Tensor& tensor, const std::function<void()>& check_device) {
  if (!tensor.defined()) {
    throw InvalidArgumentError(fmt::format("[ddp rank {}] {}: the tensor is undefined", rank, op));
  }
  check_device();
  if (tensor.is_sparse() || !tensor.is_contiguous()) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] {}: the tensor must be dense and contiguous (call .contiguous() first)", rank, op));
  }
}

void check_root(int rank, int size, int root) {
  if (root < 0 || root >= size) {
    throw InvalidArgumentError(
        fmt::format("[ddp rank {}] broadcast: root {} is not a rank of this group (size {})", rank, root, size));
  }
}

void check_allgather_outputs(int rank, int size, const std::vector<at::Tensor>& outputs, const at::Tensor& input) {
  if (static_cast<int>(outputs.size()) != size) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] allgather: {} output tensors given, the group has {} ranks (one output per rank)", rank,
        outputs.size(), size));
  }
  for (const auto& out : outputs) {
    if (!out.defined() || out.numel() != input.numel() || out.scalar_type() != input.scalar_type()) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] allgather: every output must have the input's size and dtype ({} x {}), got {} x {}", rank,
          input.numel(), c10::toString(input.scalar_type()), out.defined() ? out.numel() : 0,
          out.defined() ? c10::toString(out.scalar_type()) : "undefined"));
    }
  }
}

void check_allgather(int rank, int size, const std::vector<at::Tensor>& outputs, const at::Tensor& input,
                     const std::function<void(const at::Tensor&)>& check_each) {
  check_each(input);
  check_allgather_outputs(rank, size, outputs, input);
  for (const auto& out : outputs) check_each(out);
}

} // namespace ddp::detail
