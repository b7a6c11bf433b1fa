// ReductionPrecision: how each parameter's gradient is summed, from Options::reproducible,
// wire_dtype, accumulate_dtype and wire_dtype_overrides. Either the process group's
// allreduce (the default: the library picks the order) or its allreduce_ordered, with a
// wire and an accumulation dtype per parameter. Every rank resolves the same options
// (checked across ranks at construction) over the same parameters, so the same result.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include <ddp/options.h>
#include <ddp/process_group.h>

namespace ddp::detail {

class ReductionPrecision {
 public:
  // Throws InvalidArgumentError naming the option, the parameter and `rank` for a wire
  // or accumulation dtype that is not floating, or a pattern that matches no parameter.
  ReductionPrecision(const Options& options, const std::vector<std::string>& names,
                     const std::vector<at::Tensor>& parameters, int rank);

  // Whether gradients are reduced with allreduce_ordered.
  bool ordered() const { return ordered_; }
  // Parameter i's reduction (divisor 1; the caller sets it).
  const OrderedReduce& of(size_t index) const { return per_parameter_[index]; }
  // Per parameter, what must share a bucket besides dtype and device: the wire dtype.
  std::vector<int> bucket_groups() const;
  // "fc.weight: bfloat16 on the wire, float32 sums" lines for the debug log.
  std::string describe(const std::vector<std::string>& names) const;

 private:
  bool ordered_ = false;
  std::vector<OrderedReduce> per_parameter_;
};

} // namespace ddp::detail
