// ProcessGroupNCCL: ddp::ProcessGroup over NCCL for CUDA tensors on one device (the one
// this rank is bound to). Every collective runs on the group's one communication
// stream, taken from LibTorch's stream pool:
//   1. an event recorded on the caller's current stream (the producer) is waited on by
//      the communication stream, so the collective reads finished data;
//   2. the caching allocator is told (recordStream) that each tensor is used on the
//      communication stream, so its memory is not reused before the collective ends;
//   3. the NCCL call is queued (NcclComm::run: non-blocking, bounded by timeout()), then
//      a completion event (see WorkNCCL), and the group's watchdog starts the work's
//      deadline (comm/watchdog.h): timeout() after its launch, the communicator is
//      aborted and every waiter, on any thread, gets an error naming the collective.
// Nothing here blocks the host except barrier() and WorkNCCL::wait(timeout). Issuing is
// serialised by a mutex, so collectives are queued, and complete, in issue order.
#pragma once

#include <c10/core/Device.h>
#include <c10/cuda/CUDAStream.h>
#include <nccl.h>

#include <memory>
#include <mutex>

#include <ddp/process_group.h>

namespace ddp::detail {
class Watchdog;
} // namespace ddp::detail

namespace ddp::nccl {

class NcclComm;
class WorkNCCL;

class ProcessGroupNCCL final : public ProcessGroup {
 public:
  // Joins the NCCL communicator named by `id` (from rank 0, through a rendezvous) as
  // `rank` of `size`, on `device`. Blocks until every rank has joined, at most `timeout`
  // (then TimeoutError), which also becomes the group's timeout().
  ProcessGroupNCCL(int rank, int size, c10::Device device, const ncclUniqueId& id, std::chrono::milliseconds timeout);
  // Waits (up to timeout()) for queued collectives, then destroys the communicator; aborts
  // it instead when they do not finish, so that exit never hangs on a dead peer.
  ~ProcessGroupNCCL() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  // Each collective is enqueued on comm_stream(), after the caller's current stream, and
  // returns at once; its Work's wait() makes the caller's stream wait for it.
  std::shared_ptr<Work> allreduce(at::Tensor tensor) override;
  std::shared_ptr<Work> broadcast(at::Tensor tensor, int root) override;
  std::shared_ptr<Work> allgather(std::vector<at::Tensor> outputs, at::Tensor input) override;
  // The owner-sums exchange (OrderedSum), all on the communication stream: grouped
  // ncclSend/ncclRecv of the chunks, the rank-order adds, ncclAllGather of the sums.
  std::shared_ptr<Work> allreduce_ordered(at::Tensor tensor, OrderedReduce how) override;
  // NCCL has no barrier: a one-element all-reduce, waited for on the host.
  void barrier() override;
  // Aborts the NCCL communicator (NcclComm::abort); later calls report `reason`.
  void abort(const std::string& reason) override;

  c10::Device device() const override { return device_; }
  c10::cuda::CUDAStream comm_stream() const { return comm_stream_; }

 private:
  // Throws InvalidArgumentError unless `tensor` is a dense contiguous tensor on device_.
  void check_tensor(const at::Tensor& tensor, const char* op) const;
  // Throws CommError when the communicator was aborted by an earlier failure (the
  // watchdog's, or a failed call's), with that failure's reason.
  void check_usable(const char* op) const;
  // Steps 1-2 for `tensors`, then `call(comm, stream)` (the NCCL call), then the
  // completion event. Must be called with mutex_ held.
  template <typename Call>
  std::shared_ptr<Work> launch(const char* op, std::string description, const std::vector<at::Tensor>& tensors,
                               Call call);

  const int rank_;
  const int size_;
  const c10::Device device_;
  c10::cuda::CUDAStream comm_stream_;
  std::shared_ptr<NcclComm> comm_;
  std::unique_ptr<detail::Watchdog> watchdog_;
  std::mutex mutex_;
  uint64_t sequence_ = 0;
};

} // namespace ddp::nccl
