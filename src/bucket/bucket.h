// Bucket: one flat buffer holding the gradients of several parameters of the same dtype
// and device, with one view per parameter, and the state of its reduction in the
// current iteration. Owned by the reducer; one all-reduce per bucket per iteration.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <memory>
#include <vector>

#include <ddp/work.h>

namespace ddp::detail {

class Bucket {
 public:
  // `members`: parameter indices into `parameters`, in slot order.
  Bucket(std::vector<size_t> members, const std::vector<at::Tensor>& parameters);

  const std::vector<size_t>& members() const { return members_; }
  at::Tensor& flat() { return flat_; }
  // What this iteration's collective reduces: the flat buffer, or, for a one-parameter
  // bucket reduced in place, that parameter's .grad.
  at::Tensor& comm_tensor() { return in_place_.defined() ? in_place_ : flat_; }
  bool in_place() const { return in_place_.defined(); }
  void set_in_place(at::Tensor grad) { in_place_ = std::move(grad); }
  // The slot of the k-th member, shaped like its parameter.
  const at::Tensor& view(size_t k) const { return views_[k]; }
  size_t bytes() const { return flat_.nbytes(); }

  // Per-iteration state.
  void reset() {
    pending_ = members_.size();
    work_.reset();
    in_place_ = at::Tensor();
  }
  // Returns true when this was the last slot to fill.
  bool mark_slot_ready() { return --pending_ == 0; }
  bool ready() const { return pending_ == 0; }
  size_t pending() const { return pending_; }
  std::shared_ptr<Work>& work() { return work_; }

 private:
  std::vector<size_t> members_;
  at::Tensor flat_;
  std::vector<at::Tensor> views_;
  size_t pending_ = 0;
  std::shared_ptr<Work> work_;
  at::Tensor in_place_;
};

} // namespace ddp::detail
