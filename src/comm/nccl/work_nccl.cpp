#include "comm/nccl/work_nccl.h"

#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <thread>

#include <ddp/error.h>

#include "comm/nccl/nccl_check.h"
#include "comm/nccl/nccl_comm.h"
#include "common/timeouts.h"

namespace ddp::nccl {

WorkNCCL::WorkNCCL(std::string description, uint64_t sequence, int rank, c10::Device device,
                   std::shared_ptr<NcclComm> comm)
    : Work(std::move(description), sequence, rank), device_(device), comm_(std::move(comm)) {}

void WorkNCCL::record_end(const c10::cuda::CUDAStream& stream) {
  end_event_.record(stream);
}

bool WorkNCCL::is_completed() const {
  if (Work::is_completed()) return true;
  // complete_if_pending only touches the base's own synchronised state.
  auto* self = const_cast<WorkNCCL*>(this);
  if (comm_->aborted()) {
    // Aborted kernels end, so the event may fire too: the abort decides.
    self->complete_if_pending(std::make_exception_ptr(CommError(fmt::format(
        "[ddp rank {}] collective #{} ({}) did not complete: the NCCL communicator was aborted: {}", rank_, sequence_,
        description_, comm_->abort_reason()))));
    return true;
  }
  // Any thread may ask (the watchdog's has no current device of its own).
  c10::cuda::CUDAGuard guard(device_);
  const cudaError_t status = cudaEventQuery(end_event_.event());
  if (status == cudaSuccess) {
    self->complete_if_pending(nullptr);
    return true;
  }
  (void)cudaGetLastError(); // not ready is no error; a real one is reported below, not left for the next check
  if (status == cudaErrorNotReady) return false;
  self->complete_if_pending(std::make_exception_ptr(CommError(
      fmt::format("[ddp rank {}] collective #{} ({}) failed on the GPU: CUDA error {} ({}).", rank_, sequence_,
                  description_, cudaGetErrorString(status), cudaGetErrorName(status)))));
  return true;
}

template <typename E>
void WorkNCCL::fail(const std::string& message) {
  comm_->abort(message);
  const std::string full =
      message + " The NCCL communicator has been aborted so that no rank hangs on it; this process group cannot be "
                "used again.";
  complete_if_pending(std::make_exception_ptr(E(full)));
  Work::wait(); // rethrows whichever error completed the work first
  throw E(full);
}

void WorkNCCL::wait_on_host(std::chrono::milliseconds timeout) {
  const auto deadline = detail::deadline_after(timeout); // saturates: milliseconds::max() is "never"
  auto pause = std::chrono::microseconds(10);
  for (;;) {
    if (is_completed()) return;
    const ncclResult_t async = comm_->async_error();
    if (comm_->aborted()) continue; // aborted meanwhile: is_completed() reports the abort's reason
    if (async != ncclSuccess && async != ncclInProgress) {
      const std::string last = comm_->last_error();
      fail<CommError>(fmt::format("[ddp rank {}] collective #{} ({}) failed: NCCL reports {}{}.", rank_, sequence_,
                                  description_, describe_result(async),
                                  last.empty() ? "" : fmt::format(" (\"{}\")", last)));
    }
    if (Clock::now() >= deadline) {
      fail<TimeoutError>(fmt::format(
          "[ddp rank {}] collective #{} ({}) did not complete within {} ms. Another rank is not issuing the same "
          "collectives in the same order: it crashed, is stuck, skipped a backward(), or runs a different model or "
          "number of iterations. Check the other ranks' output; raise Options::timeout (or DDP_TIMEOUT_S) only if "
          "that rank is merely slow.",
          rank_, sequence_, description_, timeout.count()));
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
  }
}

void WorkNCCL::wait(std::chrono::milliseconds timeout) {
  if (timeout.count() >= 0) wait_on_host(timeout);
  // A work that failed (here, through the watchdog or the abort) rethrows its error;
  // one that completed returns at once. Neither blocks.
  if (is_completed()) Work::wait();
  // Order the consumer after the collective on the GPU, whichever way we waited.
  c10::cuda::CUDAGuard guard(device_);
  end_event_.block(c10::cuda::getCurrentCUDAStream(device_.index()));
}

} // namespace ddp::nccl
