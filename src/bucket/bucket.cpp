#include "bucket/bucket.h"

#include <ATen/ATen.h>

#include "common/check.h"

namespace ddp::detail {

Bucket::Bucket(std::vector<size_t> members, const std::vector<at::Tensor>& parameters)
    : members_(std::move(members)) {
  DDP_CHECK(!members_.empty(), "a bucket needs at least one parameter");
  const at::Tensor& first = parameters.at(members_.front());
  int64_t total = 0;
  for (size_t index : members_) {
    const at::Tensor& p = parameters.at(index);
    DDP_CHECK(p.scalar_type() == first.scalar_type() && p.device() == first.device(),
              "bucket members must share dtype and device");
    total += p.numel();
  }
  flat_ = at::zeros({total}, first.options().requires_grad(false));
  views_.reserve(members_.size());
  int64_t offset = 0;
  for (size_t index : members_) {
    const at::Tensor& p = parameters.at(index);
    // An alias of the flat storage made with set_() rather than narrow().view(): an
    // autograd view cannot be a .grad that optimizers detach_() (gradient_as_bucket_view).
    at::Tensor slot = at::empty({0}, flat_.options());
    slot.set_(flat_.storage(), flat_.storage_offset() + offset, p.sizes(), c10::contiguous_strides(p.sizes()));
    views_.push_back(std::move(slot));
    offset += p.numel();
  }
  reset();
}

} // namespace ddp::detail
