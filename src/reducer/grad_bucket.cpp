#include <ddp/grad_bucket.h>

#include <ATen/ATen.h>
#include <c10/util/accumulate.h>

#include "common/check.h"

namespace ddp {

GradBucket::GradBucket(size_t index, bool is_last, at::Tensor buffer,
                       std::shared_ptr<const std::vector<std::string>> names,
                       std::shared_ptr<const std::vector<std::vector<int64_t>>> shapes, ProcessGroup& process_group,
                       int64_t iteration)
    : index_(index),
      is_last_(is_last),
      buffer_(std::move(buffer)),
      names_(std::move(names)),
      shapes_(std::move(shapes)),
      process_group_(&process_group),
      iteration_(iteration) {
  DDP_CHECK(names_ && shapes_ && names_->size() == shapes_->size(), "a GradBucket needs a name per shape");
}

const std::vector<at::Tensor>& GradBucket::gradients() const {
  if (gradients_.empty() && !shapes_->empty()) {
    gradients_.reserve(shapes_->size());
    int64_t offset = 0;
    for (const auto& shape : *shapes_) {
      const int64_t numel = c10::multiply_integers(shape);
      gradients_.push_back(buffer_.narrow(0, offset, numel).view(shape));
      offset += numel;
    }
  }
  return gradients_;
}

GradBucket GradBucket::with_buffer(at::Tensor buffer) const {
  DDP_CHECK_EQ(buffer.numel(), buffer_.numel());
  return GradBucket(index_, is_last_, std::move(buffer), names_, shapes_, *process_group_, iteration_);
}

} // namespace ddp
