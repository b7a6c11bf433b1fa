// ParameterSnapshot: what each parameter was when it was wrapped. A new dtype or device
// is exactly when set_data (what Module::to() uses) drops the parameter's gradient
// accumulator, and with it the reducer's hook; a new shape breaks its bucket slot. So a
// difference from the snapshot is an error naming the parameter, never silently
// unaveraged gradients.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>
#include <unordered_set>
#include <vector>

namespace ddp::detail {

class ParameterSnapshot {
 public:
  explicit ParameterSnapshot(const std::vector<at::Tensor>& parameters);
  // Throws ReductionError naming the first parameter that changed since the snapshot.
  void check_unchanged(const std::vector<at::Tensor>& parameters, const std::vector<std::string>& names,
                       int rank) const;
  // True when `tensor` is one of the snapshot's parameters.
  bool contains(const at::Tensor& tensor) const { return tensors_.count(tensor.unsafeGetTensorImpl()) > 0; }
  const std::vector<std::vector<int64_t>>& shapes() const { return shapes_; }

 private:
  std::vector<c10::ScalarType> dtypes_;
  std::vector<c10::Device> devices_;
  std::vector<std::vector<int64_t>> shapes_;
  std::unordered_set<const c10::TensorImpl*> tensors_;
};

} // namespace ddp::detail
