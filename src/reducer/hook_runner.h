// HookRunner: runs the registered communication hook (ddp::CommHook) on each bucket in
// place of the all-reduce, keeps each bucket's future for this backward, completes them
// at the end of backward (advancing every chain before waiting on any, so that each
// bucket's next collective is issued before the host waits for the last step of one),
// and reports the hook's failures for the step's status (docs/semantics.md,
// "Communication hooks").
//
// Owned by Reducer::Impl. run() is called under the reducer's mutex; complete() runs
// without it (finalize's wait on the network), when no gradient hook can fire.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ddp/comm_future.h>
#include <ddp/comm_hook.h>
#include <ddp/process_group.h>
#include <ddp/timeline.h>

#include "reducer/bucket_set.h"
#include "reducer/hook_process_group.h"

namespace ddp::detail {

class HookRunner {
 public:
  struct Failure {
    size_t bucket;
    std::string what;
  };

  // `on_stream`: a CUDA group, whose futures are waited for on the stream (its watchdog
  // owns the deadline); otherwise on the host, with `timeout` for the whole section.
  HookRunner(std::shared_ptr<ProcessGroup> process_group, int rank, bool on_stream, std::chrono::milliseconds timeout);

  // Installs `hook` (its cross-rank checks are the caller's); with `reproducible`, the
  // all-reduces it issues are ordered sums (HookProcessGroup).
  void install(std::shared_ptr<CommHook> hook, bool reproducible);
  bool active() const { return hook_ != nullptr; }
  const std::shared_ptr<CommHook>& hook() const { return hook_; }
  // The hook's name, or "?" without one (for messages about a peer's hook).
  std::string name() const { return hook_ ? hook_->name() : "?"; }

  // Runs the hook on bucket b and keeps its future. A hook that throws having issued no
  // collective runs again on the zeroed bucket, so that this rank's collectives still
  // pair with its peers'; returns the failure either way.
  std::optional<std::string> run(BucketSet& buckets, size_t b, int64_t iteration);
  // Advances every future in bucket order, then waits for each and writes its value into
  // its bucket. Appends the hook's failures to `failures` in the order found (kept when it
  // throws); `interrupted` (completing a section an exception cut short) only logs them.
  // Throws CommError (TimeoutError) when the group fails; one deadline for all buckets.
  void complete(BucketSet& buckets, bool interrupted, std::vector<Failure>& failures);

  // The message a failure on bucket b becomes.
  std::string failure_message(const std::string& rank_prefix, const BucketSet& buckets, size_t b, int64_t iteration,
                              const std::string& what) const;
  // The first bucket whose hook failed in this backward (-1: none); the status row
  // carries it, so that the peers name it.
  int32_t failed_bucket() const { return failed_bucket_; }
  void set_failed_bucket(size_t b) { failed_bucket_ = static_cast<int32_t>(b); }

  // Bytes the hook's collectives were handed since the last call.
  int64_t take_bytes() { return group_ ? group_->take_bytes() : 0; }
  // Puts the hook's collectives issued since the last call on `timeline` (kHookCollective:
  // bucket, operation, bytes, start to end), those complete; forgets them all. Called by
  // finalize after complete(). On a CUDA group a collective only ordered on the stream
  // may not have finished: its end is not known on the host, so it is left out, as the
  // reducer's own are.
  void record_timeline(Timeline& timeline, int64_t iteration);
  // Per-iteration state, for `buckets` buckets.
  void reset(size_t buckets);

 private:
  std::chrono::milliseconds wait_timeout() const { return on_stream_ ? Work::kNoTimeout : timeout_; }

  const std::shared_ptr<ProcessGroup> process_group_;
  const int rank_;
  const bool on_stream_;
  const std::chrono::milliseconds timeout_;
  std::shared_ptr<CommHook> hook_;
  std::shared_ptr<HookProcessGroup> group_;
  std::vector<std::shared_ptr<CommFuture>> futures_; // per bucket, this backward's
  int32_t failed_bucket_ = -1;
};

} // namespace ddp::detail
