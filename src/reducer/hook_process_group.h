// HookProcessGroup: the process group a communication hook is handed (GradBucket::
// process_group()). It forwards every call to the reducer's group and counts what goes
// through it, so that the reducer knows whether a hook that threw had issued anything
// (and so whether running it again keeps this rank's collectives paired with its peers'),
// and how many bytes a hook sends per iteration (ReducerStats::hook_bytes_per_iteration).
// It also keeps each collective it issued this backward (which bucket's hook issued it, the
// operation, the bytes, its Work), which HookRunner puts on the timeline once they are
// complete: a hook's collectives show beside the reducer's own.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ddp/process_group.h>

namespace ddp::detail {

class HookProcessGroup final : public ProcessGroup {
 public:
  HookProcessGroup(std::shared_ptr<ProcessGroup> inner, bool reproducible);

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  c10::Device device() const override { return inner_->device(); }

  // With `reproducible` (Options::reproducible), an allreduce_ordered in the tensor's own
  // dtype: a hook's sums are then reproducible too.
  std::shared_ptr<Work> allreduce(at::Tensor tensor) override;
  std::shared_ptr<Work> allreduce_ordered(at::Tensor tensor, OrderedReduce how) override;
  std::shared_ptr<Work> broadcast(at::Tensor tensor, int root) override;
  std::shared_ptr<Work> allgather(std::vector<at::Tensor> outputs, at::Tensor input) override;
  void barrier() override;
  void abort(const std::string& reason) override { inner_->abort(reason); }

  // A collective issued through this group (barriers, which return no Work, are not kept).
  struct Issued {
    int64_t bucket;  // the bucket whose hook (or continuation) issued it
    const char* op;  // "allreduce", "allreduce_ordered", "broadcast", "allgather"
    int64_t bytes;   // the tensor handed to it (allgather: the input)
    std::shared_ptr<Work> work;
  };

  // Collectives issued through this group so far.
  int64_t collectives() const { return collectives_; }
  // The bucket the collectives issued from now on belong to (HookRunner sets it before
  // it runs a bucket's hook or advances its future).
  void set_bucket(int64_t bucket) { bucket_ = bucket; }
  // The collectives issued since the last call, in issue order; forgets them.
  std::vector<Issued> take_issued();
  // Bytes handed to collectives since the last call (allreduce and broadcast: the tensor;
  // allgather: the input), and resets the count.
  int64_t take_bytes();

 private:
  void count(const at::Tensor& tensor);
  // Keeps `work` for the timeline; returns it.
  std::shared_ptr<Work> keep(const char* op, const at::Tensor& tensor, std::shared_ptr<Work> work);

  const std::shared_ptr<ProcessGroup> inner_;
  const bool reproducible_;
  int64_t collectives_ = 0;
  int64_t bytes_ = 0;
  int64_t bucket_ = -1;
  std::vector<Issued> issued_;
};

} // namespace ddp::detail
