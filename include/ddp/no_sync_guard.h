// Returned by DistributedDataParallel::no_sync(): while it lives, backward passes
// accumulate gradients locally; the next synchronised backward reduces the sum.
#pragma once

#include <ddp/reducer.h>

namespace ddp {

class NoSyncGuard {
 public:
  explicit NoSyncGuard(Reducer& reducer) : reducer_(&reducer), previous_(reducer.require_sync()) {
    reducer_->set_require_sync(false);
  }
  ~NoSyncGuard() {
    if (reducer_ != nullptr) reducer_->set_require_sync(previous_);
  }
  NoSyncGuard(NoSyncGuard&& other) noexcept : reducer_(other.reducer_), previous_(other.previous_) {
    other.reducer_ = nullptr;
  }
  NoSyncGuard(const NoSyncGuard&) = delete;
  NoSyncGuard& operator=(const NoSyncGuard&) = delete;
  NoSyncGuard& operator=(NoSyncGuard&&) = delete;

 private:
  Reducer* reducer_;
  bool previous_;
};

} // namespace ddp
