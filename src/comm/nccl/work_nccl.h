// WorkNCCL: the handle on one collective queued on a ProcessGroupNCCL's communication
// stream. Completion is a CUDA event recorded after the NCCL call, so waiting can mean
// two things:
//  - wait() with no timeout makes the caller's *current* CUDA stream wait on that event
//    and returns at once: no host synchronisation, the GPU orders the consumer after the
//    collective (what the reducer's hot path wants). Its deadline is the group's
//    watchdog's business (comm/watchdog.h): it fails this work and aborts the
//    communicator when the collective does not finish within the group's timeout;
//  - wait(timeout) also blocks the host, polling the event and ncclCommGetAsyncError,
//    and on a NCCL failure or an expired timeout aborts the communicator (so every
//    rank's kernels end instead of hanging) and throws CommError or TimeoutError naming
//    the rank and the collective.
// Either way, a work that failed (here or through the watchdog) rethrows its error.
// start_time() is when the collective was queued; end_time() when the host first saw it
// complete (is_completed(), a wait, or the watchdog's poll).
#pragma once

#include <ATen/cuda/CUDAEvent.h>
#include <c10/core/Device.h>
#include <c10/cuda/CUDAStream.h>

#include <memory>

#include <ddp/work.h>

namespace ddp::nccl {

class NcclComm;

class WorkNCCL final : public Work {
 public:
  WorkNCCL(std::string description, uint64_t sequence, int rank, c10::Device device, std::shared_ptr<NcclComm> comm);

  // Records the completion event on `stream`, after the collective's NCCL call.
  void record_end(const c10::cuda::CUDAStream& stream);

  // True once the GPU has finished the collective, or it failed (the communicator was
  // aborted, the event reported a CUDA error). Never blocks; safe from any thread.
  bool is_completed() const override;
  void wait(std::chrono::milliseconds timeout = kNoTimeout) override;

 private:
  // Blocks the host until the event completes, a NCCL error shows, or `timeout` passes.
  void wait_on_host(std::chrono::milliseconds timeout);
  // Aborts the communicator, marks this work failed and throws `error`.
  template <typename E>
  [[noreturn]] void fail(const std::string& message);

  const c10::Device device_;
  const std::shared_ptr<NcclComm> comm_;
  at::cuda::CUDAEvent end_event_;
};

} // namespace ddp::nccl
