// ddp::CommHook: replaces the all-reduce of each gradient bucket (PyTorch DDP's
// register_comm_hook). Register one with Reducer::register_comm_hook (or the same on
// DistributedDataParallel) before the first forward; built-ins are in <ddp/hooks.h>.
// docs/api.md, "Communication hooks", shows how to write one.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ddp/comm_future.h>
#include <ddp/grad_bucket.h>

namespace ddp {

class CommHook {
 public:
  using State = std::vector<std::pair<std::string, at::Tensor>>;

  virtual ~CommHook() = default;

  // Identifies the hook and its settings, e.g. "powersgd(rank=4, start=1000, ...)".
  // Every rank must register a hook of the same name (checked at registration); it names
  // the hook in errors.
  virtual std::string name() const = 0;

  // Starts the reduction of `bucket` and returns its result: a future whose value, the
  // sum over the ranks of the buckets' buffers (or an approximation of it), has
  // buffer().numel() elements of buffer()'s dtype, and becomes the bucket's average.
  // Called on the autograd thread as the bucket fills, in bucket order, the same buckets on
  // every rank. It must issue the same collectives on every rank, in the same order, over
  // bucket.process_group(). An exception is reported as a ReductionError on every rank
  // naming the hook and the bucket (docs/semantics.md, "Communication hooks").
  virtual std::shared_ptr<CommFuture> run(GradBucket& bucket) = 0;

  // What the hook must keep across a checkpoint (error feedback, Q matrices), by name;
  // load_state() takes what state() returned. Stateless hooks keep the defaults.
  virtual State state() const { return {}; }
  virtual void load_state(const State& state) {}
};

} // namespace ddp
