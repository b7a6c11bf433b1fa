#include "comm/ordered_sum.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <ddp/error.h>

namespace ddp::detail {
namespace {

void check_floating(int rank, c10::ScalarType type, const char* what) {
  if (!c10::isFloatingType(type)) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] allreduce_ordered: the {} dtype is {}; it must be a floating type (float32, float64, float16 "
        "or bfloat16)",
        rank, what, c10::toString(type)));
  }
}

} // namespace

OrderedSum::OrderedSum(const at::Tensor& tensor, int world_size, int rank, OrderedReduce how)
    : world_size_(world_size), how_(how) {
  if (!tensor.defined() || !tensor.is_contiguous() || tensor.is_sparse()) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] allreduce_ordered takes a defined, dense, contiguous tensor; make it contiguous first", rank));
  }
  check_floating(rank, tensor.scalar_type(), "tensor's");
  check_floating(rank, how.wire, "wire");
  check_floating(rank, how.accumulate, "accumulation");
  if (how.divisor < 1) {
    throw InvalidArgumentError(
        fmt::format("[ddp rank {}] allreduce_ordered: the divisor is {}; it must be at least 1", rank, how.divisor));
  }
  flat_ = tensor.view({-1});
  chunk_ = (flat_.numel() + world_size_ - 1) / world_size_;
}

at::Tensor OrderedSum::rows() const {
  return at::empty({world_size_, chunk_}, flat_.options().dtype(how_.wire));
}

at::Tensor OrderedSum::pack() const {
  const int64_t numel = flat_.numel();
  if (numel == world_size_ * chunk_ && flat_.scalar_type() == how_.wire) return flat_.view({world_size_, chunk_});
  at::Tensor packed = rows();
  at::Tensor packed_flat = packed.view({-1});
  packed_flat.narrow(0, 0, numel).copy_(flat_); // the cast to the wire dtype, if any
  if (packed_flat.numel() > numel) packed_flat.narrow(0, numel, packed_flat.numel() - numel).zero_();
  return packed;
}

at::Tensor OrderedSum::add(const at::Tensor& pieces) const {
  // One elementwise add per rank, in rank order: each element's sum is
  // ((p_0 + p_1) + p_2) + ..., whatever the width. Not at::sum, whose order depends on
  // the sizes and the ISA.
  at::Tensor sum = pieces[0].to(how_.accumulate, /*non_blocking=*/false, /*copy=*/true);
  for (int r = 1; r < world_size_; ++r) sum.add_(pieces[r]);
  if (how_.divisor != 1) {
    // A tensor on the sum's own device, not a Scalar: CUDA turns a division by a host
    // scalar into a multiplication by its reciprocal, which rounds differently.
    sum.div_(at::full({}, static_cast<double>(how_.divisor), sum.options()));
  }
  return sum.to(how_.wire);
}

void OrderedSum::unpack(const at::Tensor& sums) const {
  flat_.copy_(sums.view({-1}).narrow(0, 0, flat_.numel()));
}

} // namespace ddp::detail
