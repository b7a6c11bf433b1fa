// InterruptedBackward: recovery of a backward that an exception cut short before finalize
// (an exception in a backward function, a hook's error, a timeout). Its section may have
// stopped anywhere; it is completed the same way on every rank (the header, every bucket,
// and a status row saying "abandoned"), so that the ranks' collectives pair up again, and
// then the step is an error on every rank: recoverable (zero the gradients, go on) with
// the strict step check, fatal with the deferred one (the others already wrote that
// step's gradients). docs/semantics.md, "An exception during backward".
//
// Owned by Reducer::Impl and called under its mutex; it releases the lock only to wait on
// the network (a hook's futures, the section's collectives).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include <ddp/reducer_stats.h>

#include "reducer/bucket_set.h"
#include "reducer/hook_runner.h"
#include "reducer/status_row.h"
#include "reducer/step_check.h"

namespace ddp::detail {

class InterruptedBackward {
 public:
  // The parts a section is made of; they outlive this object.
  struct Parts {
    StepCheck& step_check;
    BucketSet& buckets;
    HookRunner& hooks;
    StatusRow& status;
    ReducerStats& stats;
  };
  InterruptedBackward(Parts parts, int rank, int world_size, std::chrono::milliseconds timeout);

  // Why the current section was interrupted ("" when nothing is known).
  void set_cause(std::string cause) { cause_ = std::move(cause); }
  void clear() { cause_.clear(); }

  // Launches the section's remaining buckets through `launch(b)` and its "abandoned"
  // status exchange, without waiting (with a hook: after its futures, waited for with
  // `lock` released when given). The header is verified.
  void complete_section(const std::function<bool(size_t)>& launch, int64_t iteration,
                        std::unique_lock<std::mutex>* lock = nullptr);
  // Completes the section (verifying its header first), waits for it with `lock`
  // released, then runs `after_waits` (still released: the collectives finalize issues
  // after the section's waits, the sparse gradients' exchange), runs `end_iteration` (the
  // reducer starts a new iteration), and throws:
  // ReductionError saying the step was not averaged and the reducer is ready, or, when
  // the ranks cannot be brought back in step, the sticky error.
  [[noreturn]] void settle(const std::function<bool(size_t)>& launch, int64_t iteration,
                           std::unique_lock<std::mutex>& lock, const std::function<void()>& end_iteration,
                           const std::function<void()>& after_waits = {});

 private:
  Parts parts_;
  const int rank_;
  const int world_size_;
  const std::chrono::milliseconds timeout_;
  std::string cause_;
};

} // namespace ddp::detail
