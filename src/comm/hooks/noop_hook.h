// NoopHook: sends nothing; each rank keeps its own divided gradients (measurement only).
#pragma once

#include <ddp/comm_hook.h>

namespace ddp::hooks {

class NoopHook final : public CommHook {
 public:
  std::string name() const override { return "noop"; }
  std::shared_ptr<CommFuture> run(GradBucket& bucket) override { return CommFuture::ready(bucket.buffer()); }
};

} // namespace ddp::hooks
