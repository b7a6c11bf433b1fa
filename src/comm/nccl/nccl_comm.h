// NcclComm: owns one NCCL communicator and the one-way switch that aborts it. Shared
// (std::shared_ptr) by its process group and every WorkNCCL it issued, because any of
// them may be the one that sees a failure or a timeout and must abort it; the abort
// happens once, and the communicator is destroyed by whoever lets go of it last.
#pragma once

#include <nccl.h>

#include <atomic>
#include <mutex>
#include <string>

namespace ddp::nccl {

class NcclComm {
 public:
  // Joins the communicator of `size` ranks named by `id` as `rank`, on CUDA device
  // `device_index`. Blocks until every rank has joined (ncclCommInitRank).
  NcclComm(int size, const ncclUniqueId& id, int rank, int device_index);
  // Destroys the communicator, unless it was aborted (which freed it).
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  // The raw handle; null once aborted. Only for NCCL calls made while the caller knows
  // no abort can race (the issuing thread holds its group's lock).
  ncclComm_t get() const;
  int device_index() const { return device_index_; }

  // Aborts the communicator (ncclCommAbort), which also ends any NCCL kernel waiting on
  // a peer. The first call wins and records `reason`; later calls do nothing.
  void abort(const std::string& reason);
  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  // Why it was aborted (empty while it was not).
  std::string abort_reason() const;

  // ncclCommGetAsyncError: ncclSuccess while healthy; an error once a peer or the
  // network failed. ncclInvalidUsage once aborted.
  ncclResult_t async_error() const;

 private:
  mutable std::mutex mutex_;
  ncclComm_t comm_ = nullptr;
  std::atomic<bool> aborted_{false};
  std::string abort_reason_;
  const int device_index_;
};

} // namespace ddp::nccl
