// OrderedWorkC10d: ProcessGroup::allreduce_ordered on a c10d group, in its two
// collectives. The all-to-all of the chunks is issued at once; the allgather of the sums
// needs them added first, so it is issued later, but always at the same place in the
// group's sequence on every rank: before the group issues any other collective (the
// queue below is flushed first) or when this work is waited for, older ones first. A
// c10d backend pairs collectives by issue order (gloo's tags), so an allgather issued
// whenever its all-to-all happened to finish would pair differently on each rank.
// On a CUDA group the waits are stream waits (c10d's), so nothing blocks the host there.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include <ddp/work.h>

#include "comm/ordered_sum.h"

namespace ddp::c10d_adapter {

class OrderedWorkC10d final : public Work {
 public:
  // Issues the allgather of `mine` into `sums` (a [world, chunk] tensor) on the group.
  using Gather = std::function<std::shared_ptr<Work>(at::Tensor mine, at::Tensor sums)>;

  // The works whose allgather is not issued yet, oldest first: one per group.
  class Queue {
   public:
    void push(const std::shared_ptr<OrderedWorkC10d>& work);
    // Issues the allgather of every queued work up to and including `last` (all: null),
    // oldest first. Throws the first failure (its all-to-all's, or the allgather's issue).
    void flush(const OrderedWorkC10d* last, std::chrono::milliseconds timeout);

   private:
    std::recursive_mutex mutex_; // a flush may run a wait that flushes
    std::deque<std::shared_ptr<OrderedWorkC10d>> pending_; // held: every rank issues every allgather
  };

  OrderedWorkC10d(std::string description, uint64_t sequence, int rank, detail::OrderedSum sum, at::Tensor pieces,
                  std::shared_ptr<Work> exchange, Gather gather, std::shared_ptr<Queue> queue);

  void wait(std::chrono::milliseconds timeout = kNoTimeout) override;

 private:
  // Waits for the all-to-all, adds, issues the allgather (once).
  void issue_gather(std::chrono::milliseconds timeout);

  const detail::OrderedSum sum_;
  at::Tensor pieces_;
  at::Tensor sums_;
  std::shared_ptr<Work> exchange_;
  std::shared_ptr<Work> gather_work_;
  Gather gather_;
  const std::shared_ptr<Queue> queue_;
};

} // namespace ddp::c10d_adapter
