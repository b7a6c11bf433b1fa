#include "comm/nccl/nccl_comm.h"

#include <c10/cuda/CUDAGuard.h>
#include <fmt/format.h>

#include <thread>

#include <ddp/error.h>

#include "comm/nccl/nccl_check.h"
#include "common/check.h"
#include "common/logging.h"
#include "common/timeouts.h"

namespace ddp::nccl {
namespace {

// Backs off from 10 us to 1 ms between polls: short calls settle fast, a stuck one costs
// at most a thousand polls a second.
class Backoff {
 public:
  void pause() {
    std::this_thread::sleep_for(pause_);
    pause_ = std::min(pause_ * 2, std::chrono::microseconds(1000));
  }

 private:
  std::chrono::microseconds pause_{10};
};

} // namespace

NcclComm::NcclComm(int size, const ncclUniqueId& id, int rank, int device_index, std::chrono::milliseconds timeout)
    : rank_(rank), device_index_(device_index), timeout_(timeout) {
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_index));
  ncclUniqueId copy = id;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t rc = ncclCommInitRankConfig(&comm_, size, copy, rank, &config);
  const auto deadline = detail::deadline_after(timeout);
  Backoff backoff;
  while (rc == ncclInProgress) {
    if (std::chrono::steady_clock::now() >= deadline) {
      const std::string message = fmt::format(
          "[ddp rank {}] NCCL communicator init of {} ranks on cuda:{} did not complete within {} ms: a rank did not "
          "join (it crashed, was not started, or created its process groups in another order), or the ranks cannot "
          "reach each other (NCCL_SOCKET_IFNAME, firewalls; NCCL_DEBUG=INFO says which). Raise DDP_TIMEOUT_S only if "
          "a rank is merely slow to start.",
          rank, size, device_index, timeout.count());
      if (comm_ != nullptr) (void)ncclCommAbort(comm_);
      comm_ = nullptr;
      throw TimeoutError(message);
    }
    backoff.pause();
    if (comm_ == nullptr) break; // NCCL gave no handle: the result below says why
    const ncclResult_t query = ncclCommGetAsyncError(comm_, &rc);
    if (query != ncclSuccess) rc = query;
  }
  if (rc != ncclSuccess) {
    if (comm_ != nullptr) (void)ncclCommAbort(comm_);
    comm_ = nullptr;
    throw_nccl_error("ncclCommInitRankConfig", rc, nullptr, __FILE__, __LINE__);
  }
}

NcclComm::~NcclComm() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (comm_ == nullptr) return;
  // NCCL makes the communicator's device current itself in these calls; nothing here may
  // throw out of a destructor.
  // Finalize flushes what is queued and waits (in the background) for the peers to do
  // the same; a peer that is gone would keep it in progress forever, so it is bounded.
  ncclResult_t rc = ncclCommFinalize(comm_);
  const auto deadline = detail::deadline_after(timeout_);
  Backoff backoff;
  while (rc == ncclInProgress && std::chrono::steady_clock::now() < deadline) {
    backoff.pause();
    const ncclResult_t query = ncclCommGetAsyncError(comm_, &rc);
    if (query != ncclSuccess) rc = query;
  }
  if (rc == ncclSuccess) {
    // Destroy frees the communicator even when it reports an error: never abort after it.
    rc = ncclCommDestroy(comm_);
    if (rc != ncclSuccess) {
      detail::log(detail::LogLevel::kWarn, rank_, "ncclCommDestroy on cuda:{}: {}", device_index_, describe_result(rc));
    }
  } else {
    detail::log(detail::LogLevel::kWarn, rank_, "NCCL communicator on cuda:{} did not shut down cleanly ({}); aborting it",
                device_index_, rc == ncclInProgress ? "still in progress after the timeout" : describe_result(rc));
    (void)ncclCommAbort(comm_);
  }
  comm_ = nullptr;
}

void NcclComm::throw_aborted(const char* what) const {
  throw CommError(fmt::format(
      "[ddp rank {}] {}: this NCCL communicator was aborted after an earlier failure: {}. Create a new process group "
      "(every rank must), or restart the job.",
      rank_, what, abort_reason_));
}

void NcclComm::settle(const char* what, ncclResult_t rc, std::chrono::milliseconds timeout,
                      std::unique_lock<std::mutex>& lock) {
  const auto deadline = detail::deadline_after(timeout);
  Backoff backoff;
  while (rc == ncclInProgress) {
    if (std::chrono::steady_clock::now() >= deadline) {
      const std::string message = fmt::format(
          "[ddp rank {}] {} was still being enqueued after {} ms: a peer stopped taking part (it crashed, is stuck, "
          "or issues other collectives). The NCCL communicator has been aborted so that no rank hangs on it; this "
          "process group cannot be used again.",
          rank_, what, timeout.count());
      abort_locked(message);
      throw TimeoutError(message);
    }
    // Let abort() and the watchdog's polls in between.
    lock.unlock();
    backoff.pause();
    lock.lock();
    if (comm_ == nullptr) throw_aborted(what);
    const ncclResult_t query = ncclCommGetAsyncError(comm_, &rc);
    if (query != ncclSuccess) rc = query;
  }
  if (rc != ncclSuccess) {
    lock.unlock(); // throw_nccl_error reads the last error and aborts: both take the mutex
    throw_nccl_error(what, rc, this, __FILE__, __LINE__);
  }
}

bool NcclComm::abort_locked(const std::string& reason) {
  if (aborted_.load(std::memory_order_relaxed)) return false;
  abort_reason_ = reason;
  aborted_.store(true, std::memory_order_release);
  if (comm_ == nullptr) return true;
  // Nothing that can throw before the abort (NCCL makes the device current itself): a
  // communicator marked aborted but left running would hang its kernels for good.
  const ncclResult_t rc = ncclCommAbort(comm_);
  comm_ = nullptr;
  detail::log(detail::LogLevel::kError, rank_, "NCCL communicator aborted{}: {}",
              rc == ncclSuccess ? "" : fmt::format(" (ncclCommAbort: {})", ncclGetErrorString(rc)), reason);
  return true;
}

void NcclComm::abort(const std::string& reason) {
  // Under the mutex: no other call is inside NCCL on this handle meanwhile, and none
  // blocks there for long (non-blocking communicator), so this waits briefly at most.
  std::lock_guard<std::mutex> lock(mutex_);
  abort_locked(reason);
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

std::string NcclComm::last_error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  const char* last = ncclGetLastError(comm_);
  return last != nullptr ? std::string(last) : std::string();
}

} // namespace ddp::nccl
