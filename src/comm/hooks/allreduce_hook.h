// AllreduceHook: one all-reduce (sum) of the bucket, what the reducer does without a hook.
#pragma once

#include <ddp/comm_hook.h>

namespace ddp::hooks {

class AllreduceHook final : public CommHook {
 public:
  std::string name() const override { return "allreduce"; }
  std::shared_ptr<CommFuture> run(GradBucket& bucket) override;
};

} // namespace ddp::hooks
