// Argument checks every backend makes the same way, so their errors read the same.
// A backend adds only its own rule for where its tensors may live.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace ddp::detail {

// InvalidArgumentError unless `tensor` is defined, then passes `check_device` (the
// backend's rule for the tensor's device; it throws InvalidArgumentError itself), then is
// dense and contiguous. `op` names the collective in the message.
void check_tensor(int rank, const char* op, const at::Tensor& tensor, const std::function<void()>& check_device);
// InvalidArgumentError unless 0 <= root < size.
void check_root(int rank, int size, int root);
// InvalidArgumentError unless there is one output per rank, each with the input's
// element count and dtype. Device and layout are the backend's own checks.
void check_allgather_outputs(int rank, int size, const std::vector<at::Tensor>& outputs, const at::Tensor& input);
// An allgather's arguments, in this order: `check_each` (the backend's check_tensor) on the
// input, check_allgather_outputs, then `check_each` on every output.
void check_allgather(int rank, int size, const std::vector<at::Tensor>& outputs, const at::Tensor& input,
                     const std::function<void(const at::Tensor&)>& check_each);

} // namespace ddp::detail
