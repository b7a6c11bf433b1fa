// NcclComm: owns one NCCL communicator and the one-way switch that aborts it. Shared
// (std::shared_ptr) by its process group, its watchdog and every WorkNCCL it issued,
// because any of them may be the one that sees a failure or a timeout and must abort it;
// the abort happens once, and the communicator is destroyed by whoever lets go of it last.
//
// The communicator is non-blocking (ncclConfig_t::blocking = 0): no NCCL call waits on a
// peer inside NCCL; a call that cannot finish at once returns ncclInProgress and
// completes in the background, polled with ncclCommGetAsyncError. That is what bounds
// everything here by a deadline (the init of a job whose peer never starts, a launch
// whose peer died) and what makes the handle safe to abort: every call on it runs under
// this object's mutex, returns promptly, and the polling drops the mutex between polls,
// so abort() (which takes the mutex) never frees the communicator under a running call
// and never waits long for one.
#pragma once

#include <nccl.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>

namespace ddp::nccl {

class NcclComm {
 public:
  // Joins the communicator of `size` ranks named by `id` as `rank`, on CUDA device
  // `device_index`, waiting at most `timeout` for every rank to join: TimeoutError (the
  // communicator aborted) after it, CommError when NCCL fails.
  NcclComm(int size, const ncclUniqueId& id, int rank, int device_index, std::chrono::milliseconds timeout);
  // Finalizes (flushes) and destroys the communicator, unless it was aborted (which freed
  // it); aborts it instead when it does not quiesce within the init's timeout.
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  // Runs `call(comm)`, one NCCL call that enqueues work (a collective), under the mutex,
  // then polls while NCCL reports ncclInProgress. When it returns, the work is enqueued
  // on the call's stream. Throws CommError when the communicator was aborted (before or
  // meanwhile) or the call failed (aborting it first), TimeoutError (aborting it) when
  // the call is still in progress after `timeout`. `what` names the call in messages.
  template <typename Call>
  void run(const char* what, std::chrono::milliseconds timeout, Call&& call) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (comm_ == nullptr) throw_aborted(what);
    const ncclResult_t rc = call(comm_);
    settle(what, rc, timeout, lock);
  }

  int rank() const { return rank_; }
  int device_index() const { return device_index_; }

  // Aborts the communicator (ncclCommAbort), which also ends any NCCL kernel waiting on
  // a peer. The first call wins and records `reason`; later calls do nothing.
  void abort(const std::string& reason);
  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  // Why it was aborted (empty while it was not).
  std::string abort_reason() const;

  // ncclCommGetAsyncError: ncclSuccess while healthy, ncclInProgress while a call
  // completes in the background; an error once a peer or the network failed.
  // ncclInvalidUsage once aborted.
  ncclResult_t async_error() const;
  // NCCL's last error text (may be empty).
  std::string last_error() const;

 private:
  // Polls `rc` (the call's result) to completion; caller holds `lock` (on mutex_).
  void settle(const char* what, ncclResult_t rc, std::chrono::milliseconds timeout,
              std::unique_lock<std::mutex>& lock);
  [[noreturn]] void throw_aborted(const char* what) const; // caller holds mutex_
  // Aborts with mutex_ held. Returns false when it was aborted already.
  bool abort_locked(const std::string& reason);

  mutable std::mutex mutex_;
  ncclComm_t comm_ = nullptr;
  std::atomic<bool> aborted_{false};
  std::string abort_reason_;
  const int rank_;
  const int device_index_;
  const std::chrono::milliseconds timeout_; // the init's, also bounds the destroy
};

} // namespace ddp::nccl
