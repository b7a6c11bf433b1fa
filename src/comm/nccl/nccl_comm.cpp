#include "comm/nccl/nccl_comm.h"

#include <c10/cuda/CUDAGuard.h>

#include "comm/nccl/nccl_check.h"
#include "common/check.h"
#include "common/logging.h"

namespace ddp::nccl {

NcclComm::NcclComm(int size, const ncclUniqueId& id, int rank, int device_index) : device_index_(device_index) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_index));
  ncclUniqueId copy = id;
  DDP_CHECK_NCCL(ncclCommInitRank(&comm_, size, copy, rank));
}

NcclComm::~NcclComm() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (comm_ == nullptr) return;
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_index_));
  const ncclResult_t rc = ncclCommDestroy(comm_);
  if (rc != ncclSuccess) {
    detail::log(detail::LogLevel::kWarn, detail::world_rank(), "ncclCommDestroy failed: {}", describe_result(rc));
  }
  comm_ = nullptr;
}

ncclComm_t NcclComm::get() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return comm_;
}

void NcclComm::abort(const std::string& reason) {
  ncclComm_t comm = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (aborted_.load(std::memory_order_relaxed)) return;
    abort_reason_ = reason;
    comm = comm_;
    comm_ = nullptr;
    aborted_.store(true, std::memory_order_release);
  }
  if (comm == nullptr) return;
  // Outside the lock: the abort can take a while, and a thread inside an NCCL call on
  // this communicator is what it unblocks.
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_index_));
  const ncclResult_t rc = ncclCommAbort(comm);
  detail::log(detail::LogLevel::kError, detail::world_rank(), "NCCL communicator aborted{}: {}",
              rc == ncclSuccess ? "" : fmt::format(" (ncclCommAbort: {})", ncclGetErrorString(rc)), reason);
}

std::string NcclComm::abort_reason() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return abort_reason_;
}

ncclResult_t NcclComm::async_error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (comm_ == nullptr) return ncclInvalidUsage;
  ncclResult_t async = ncclSuccess;
  const ncclResult_t rc = ncclCommGetAsyncError(comm_, &async);
  return rc != ncclSuccess ? rc : async;
}

} // namespace ddp::nccl
