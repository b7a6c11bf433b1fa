// Argument checks every backend makes the same way, so their errors read the same.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace ddp::detail {

// InvalidArgumentError unless 0 <= root < size.
void check_root(int rank, int size, int root);
// InvalidArgumentError unless there is one output per rank, each with the input's
// element count and dtype. Device and layout are the backend's own checks.
void check_allgather_outputs(int rank, int size, const std::vector<at::Tensor>& outputs, const at::Tensor& input);

} // namespace ddp::detail
