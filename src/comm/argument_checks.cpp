#include "comm/argument_checks.h"

#include <fmt/format.h>

#include <ddp/error.h>

namespace ddp::detail {

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

} // namespace ddp::detail
