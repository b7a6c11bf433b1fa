// How a collective reads in errors, timeouts and logs ("allreduce of 4194304 x Float
// (16.00 MiB)"): every backend describes its collectives this way, adding what is its own.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace ddp::detail {

// "<op> of <numel> x <dtype> (<MiB> MiB)".
std::string describe_collective(const char* op, const at::Tensor& tensor);

} // namespace ddp::detail
