// ProcessGroupC10d: any PyTorch process group — a c10d::ProcessGroup (what
// torch.distributed hands out, subgroups included) or a c10d::Backend (ProcessGroupGloo,
// ProcessGroupNCCL, ProcessGroupMPI) — seen as a ddp::ProcessGroup, so the reducer runs
// on it unchanged. Arguments are checked the way libddp's own backends check them;
// collectives become WorkC10d; c10d's exceptions become CommError (TimeoutError for a
// wait that ran out). Holds a reference on the c10d group for as long as it lives.
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include <atomic>
#include <mutex>
#include <string>

#include <ddp/process_group.h>

#include "comm/c10d/ordered_work_c10d.h"

namespace ddp::c10d_adapter {

// `Group` is c10d::ProcessGroup or c10d::Backend (explicitly instantiated for both).
template <typename Group>
class ProcessGroupC10d final : public ProcessGroup {
 public:
  // `device`: where this group takes its tensors (CPU for gloo, the rank's GPU for NCCL).
  ProcessGroupC10d(c10::intrusive_ptr<Group> group, c10::Device device);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  // "gloo", or "c10d:<name>" for another c10d backend (e.g. "c10d:nccl").
  std::string backend() const override { return backend_; }
  c10::Device device() const override { return device_; }

  std::shared_ptr<Work> allreduce(at::Tensor tensor) override;
  std::shared_ptr<Work> broadcast(at::Tensor tensor, int root) override;
  std::shared_ptr<Work> allgather(std::vector<at::Tensor> outputs, at::Tensor input) override;
  // The owner-sums exchange (OrderedSum): alltoall_base of the chunks now, the allgather
  // of the sums before the next collective or at the wait (OrderedWorkC10d).
  std::shared_ptr<Work> allreduce_ordered(at::Tensor tensor, OrderedReduce how) override;
  void barrier() override;
  // Aborts the c10d group (where its backend can) and fails every later call with `reason`.
  void abort(const std::string& reason) override;

  const c10::intrusive_ptr<Group>& group() const { return group_; }

 private:
  void check_tensor(const at::Tensor& tensor, const char* op) const;
  void check_usable() const;
  // Issues the pending ordered all-reduces' allgathers, then runs `issue` (which calls
  // into c10d), turning its exceptions into CommError.
  template <typename Issue>
  std::shared_ptr<Work> run(const char* op, const at::Tensor& tensor, Issue&& issue);
  // run() without the flush (the flush's own allgathers).
  template <typename Issue>
  std::shared_ptr<Work> issue(const std::string& description, Issue&& issue);

  c10::intrusive_ptr<Group> group_;
  const c10::Device device_;
  const int rank_;
  const int size_;
  const std::string backend_;
  std::atomic<uint64_t> sequence_{0};
  mutable std::mutex mutex_;
  // The last collective issued: the next completes after it (WorkC10d).
  std::weak_ptr<Work> last_;
  std::string aborted_;
  const std::shared_ptr<OrderedWorkC10d::Queue> ordered_ = std::make_shared<OrderedWorkC10d::Queue>();
};

} // namespace ddp::c10d_adapter
