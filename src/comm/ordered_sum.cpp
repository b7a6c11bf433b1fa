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

bool OrderedSum::direct() const {
  return flat_.numel() == world_size_ * chunk_ && flat_.scalar_type() == how_.wire;
}

at::Tensor OrderedSum::rows(at::Tensor* slot) const {
  const int64_t numel = world_size_ * chunk_;
  const auto options = flat_.options().dtype(how_.wire);
  if (slot == nullptr) return at::empty({world_size_, chunk_}, options);
  if (!slot->defined() || slot->numel() < numel || slot->scalar_type() != how_.wire ||
      slot->device() != flat_.device()) {
    *slot = at::empty({numel}, options);
  }
  return slot->narrow(0, 0, numel).view({world_size_, chunk_});
}

at::Tensor OrderedSum::pack(Scratch* scratch) const {
  if (direct()) return flat_.view({world_size_, chunk_});
  const int64_t numel = flat_.numel();
  at::Tensor packed = rows(scratch ? &scratch->packed : nullptr);
  at::Tensor packed_flat = packed.view({-1});
  packed_flat.narrow(0, 0, numel).copy_(flat_); // the cast to the wire dtype, if any
  if (packed_flat.numel() > numel) packed_flat.narrow(0, numel, packed_flat.numel() - numel).zero_();
  return packed;
}

at::Tensor OrderedSum::pieces(Scratch* scratch) const {
  return rows(scratch ? &scratch->pieces : nullptr);
}

at::Tensor OrderedSum::gathered(Scratch* scratch) const {
  if (direct()) return flat_.view({world_size_, chunk_});
  return rows(scratch ? &scratch->gathered : nullptr);
}

at::Tensor OrderedSum::add(const at::Tensor& pieces, Scratch* scratch) const {
  // One elementwise add per rank, in rank order: each element's sum is
  // ((p_0 + p_1) + p_2) + ..., whatever the width. Not at::sum, whose order depends on
  // the sizes and the ISA.
  const int64_t width = pieces.size(1);
  at::Tensor sum;
  if (how_.accumulate == how_.wire) {
    sum = pieces[0]; // scratch: summed in place
  } else {
    at::Tensor* slot = scratch ? &scratch->sum : nullptr;
    const auto options = pieces.options().dtype(how_.accumulate);
    if (slot == nullptr) {
      sum = at::empty({width}, options);
    } else {
      if (!slot->defined() || slot->numel() < width || slot->scalar_type() != how_.accumulate ||
          slot->device() != pieces.device()) {
        *slot = at::empty({width}, options);
      }
      sum = slot->narrow(0, 0, width);
    }
    sum.copy_(pieces[0]);
  }
  for (int r = 1; r < world_size_; ++r) sum.add_(pieces[r]);
  if (how_.divisor != 1) {
    // A tensor on the sum's own device, not a Scalar: CUDA turns a division by a host
    // scalar into a multiplication by its reciprocal, which rounds differently.
    sum.div_(at::full({}, static_cast<double>(how_.divisor), sum.options()));
  }
  if (how_.accumulate == how_.wire) return sum;
  at::Tensor out = pieces[0]; // free again: the wire-dtype result goes there
  out.copy_(sum);
  return out;
}

void OrderedSum::unpack(const at::Tensor& gathered) const {
  if (gathered.data_ptr() == flat_.data_ptr()) return; // gathered in place
  flat_.copy_(gathered.view({-1}).narrow(0, 0, flat_.numel()));
}

} // namespace ddp::detail
