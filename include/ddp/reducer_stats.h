// Counters the reducer keeps for benchmarks and monitoring; cheap enough to be on always.
#pragma once

#include <cstdint>

namespace ddp {

struct ReducerStats {
  int64_t iterations = 0;          // synchronised backward passes finalised
  int64_t buckets = 0;             // current number of buckets
  int64_t bytes_per_iteration = 0; // bytes all-reduced per iteration (buckets only)
  int64_t hook_bytes_per_iteration = 0; // with a communication hook: bytes its collectives were
                                        // handed in the last iteration (what it sends)
  int64_t collectives = 0;         // collectives issued by the reducer, all iterations
  int64_t buckets_skipped = 0;     // bucket all-reduces left out because no rank used any of
                                   // their parameters (skip_all_reduce_unused_params), all iterations
  int64_t bytes_skipped = 0;       // their bytes, all iterations
  int64_t sparse_bytes_per_iteration = 0; // sparse gradients (Options::expect_sparse_gradients): the
                                          // padded indices and values this rank sent in the last iteration
  int64_t hook_ns = 0;             // total time spent inside gradient hooks
  int64_t finalize_ns = 0;         // total time of the end-of-backward callbacks
  int64_t finalize_wait_ns = 0;    // of which waiting for collectives
  int64_t graph_walk_ns = 0;       // total time of find_unused_parameters graph walks
  int64_t graph_walk_nodes = 0;    // autograd nodes visited by the last graph walk
  int64_t bucket_rebuilds = 0;     // 0 or 1; with Options::bucket_cap_autotune, one more per
                                   // candidate and one for the chosen cap
  double autotuned_bucket_cap_mb = 0; // Options::bucket_cap_autotune: the cap chosen, in MiB
                                      // (0 while tuning, or without autotune)
  int64_t autotune_iterations = 0; // synchronised iterations spent tuning (the decision's one
                                   // included), once chosen
  int64_t deferred_flag_reads = 0; // backward passes that returned without reading the ranks' used
                                   // flags (deferred step check: read once they arrive)
  int64_t reduced_callback_ns = 0; // total time in the reduced callback (an overlapped optimizer's
                                   // updates), inside finalize_ns (and inside finalize_wait_ns
                                   // for the buckets handed over while others are on the wire)
  int64_t buckets_reported_early = 0; // buckets handed to it as soon as their collective completed
  int64_t late_gradients = 0;      // hook runs after their parameter's bucket was launched (a
                                   // hook that runs more than once per backward), all iterations
  int64_t follow_up_collectives = 0; // all-reduces of those late contributions after the buckets,
                                     // all iterations (docs/semantics.md, "more than once")
  int64_t step_check_ns = 0;       // total time keeping the ranks in step: section headers (their
                                   // exchange and wait) and the checks that the parameters and
                                   // the module's parameters are unchanged
};

} // namespace ddp
