// ProcessGroupMPI: ddp::ProcessGroup over MPI for CPU tensors, and for CUDA tensors
// through pinned host copies (HostStaging: a fallback without NCCL, and several ranks on
// one GPU). Each instance has its own
// communicator (a duplicate of MPI_COMM_WORLD), so its collectives never match another
// group's; all instances share MpiRuntime's thread, which runs them in issue order.
#pragma once

#include <mpi.h>

#include <atomic>
#include <memory>
#include <vector>

#include <ddp/process_group.h>

#include "comm/mpi/request_wait.h"
#include "comm/mpi/ring_allreduce.h"
#include "comm/ordered_sum.h"

namespace ddp::mpi {

class HostStaging;

class ProcessGroupMPI final : public ProcessGroup {
 public:
  ProcessGroupMPI();
  ~ProcessGroupMPI() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  // Each collective is queued for the one MPI communication thread (MpiRuntime) and
  // returns at once; CUDA tensors travel through pinned host copies (HostStaging).
  std::shared_ptr<Work> allreduce(at::Tensor tensor) override;
  std::shared_ptr<Work> broadcast(at::Tensor tensor, int root) override;
  std::shared_ptr<Work> allgather(std::vector<at::Tensor> outputs, at::Tensor input) override;
  // The owner-sums exchange (OrderedSum) as one job of the communication thread: an
  // all-to-all of the chunks, the rank-order adds, an allgather of the sums.
  std::shared_ptr<Work> allreduce_ordered(at::Tensor tensor, OrderedReduce how) override;
  // MPI_Barrier on the communication thread, in issue order with the collectives.
  void barrier() override;

 private:
  // Throws InvalidArgumentError unless `tensor` is a dense contiguous CPU or CUDA tensor.
  void check_tensor(const at::Tensor& tensor, const char* op) const;
  // Host copies for the CUDA tensors among `tensors` (HostStaging), or null if none is.
  std::shared_ptr<HostStaging> stage(std::vector<at::Tensor> tensors, const std::vector<bool>& reads,
                                     std::vector<bool> writes) const;
  std::shared_ptr<Work> make_work(std::string description);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  std::atomic<uint64_t> sequence_{0};
  // How the communication thread waits for each collective (DDP_MPI_WAIT).
  WaitPolicy wait_;
  // Large all-reduces when the wait sleeps; shared with the queued collectives, which
  // may run after this group is destroyed.
  std::shared_ptr<RingAllreduce> ring_;
  // allreduce_ordered's buffers, used only on the communication thread (and by the
  // queued collectives, which may run after this group is destroyed).
  std::shared_ptr<detail::OrderedSum::Scratch> ordered_scratch_ = std::make_shared<detail::OrderedSum::Scratch>();
};

} // namespace ddp::mpi
