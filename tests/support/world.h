// Helpers shared by the multi-process tests: the world process group, cross-rank
// comparisons, and the oracle's error measure. Expected values never come from the
// code under test: the oracle is plain single-process autograd.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include <ddp/ddp.h>

namespace ddp::test {

// The process group every multi-process test uses (created by the test main).
std::shared_ptr<ProcessGroup> world_ptr();
inline ProcessGroup& world() { return *world_ptr(); }
// `device`: where the group's collectives take their tensors (CPU for MPI, the rank's
// GPU for NCCL); the helpers below move their tensors there.
void set_world(std::shared_ptr<ProcessGroup> pg, at::Device device = at::kCPU);
at::Device world_device();

// True on every rank iff every rank holds bit-identical contents (dtype, shape, bytes).
bool identical_across_ranks(const at::Tensor& tensor);

// max |actual - expected| / max(max |expected|, 1e-30): relative to the tensor's scale.
double max_relative_error(const at::Tensor& actual, const at::Tensor& expected);

// Sum of an integer over all ranks (a small allreduce).
int64_t sum_over_ranks(int64_t value);

// Options with a short timeout, so that a broken test fails instead of hanging.
Options test_options();

} // namespace ddp::test
