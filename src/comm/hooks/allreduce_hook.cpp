#include "comm/hooks/allreduce_hook.h"

#include <ddp/hooks.h>
#include <ddp/process_group.h>

namespace ddp::hooks {

std::shared_ptr<CommFuture> AllreduceHook::run(GradBucket& bucket) {
  const at::Tensor& buffer = bucket.buffer();
  return CommFuture::of(bucket.process_group().allreduce(buffer), buffer);
}

std::shared_ptr<CommHook> allreduce() {
  return std::make_shared<AllreduceHook>();
}

} // namespace ddp::hooks
