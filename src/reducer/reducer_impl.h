// Reducer::Impl: the state machine behind ddp::Reducer. One per Reducer, shared with the
// autograd callbacks that may outlive it (they hold a weak_ptr). See docs/semantics.md
// for the protocol and docs/threads.md for which thread runs what.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/variable.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <ddp/reducer.h>

#include "bucket/bucket.h"
#include "reducer/graph_walker.h"

namespace ddp {

class Reducer::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(NamedParameters parameters, std::shared_ptr<ProcessGroup> process_group, Options options);
  ~Impl();

  // Registers the gradient hooks (needs shared_from_this, so not in the constructor).
  void register_hooks();

  void prepare_for_forward();
  void prepare_for_backward(const std::vector<at::Tensor>& outputs);

  // Autograd callbacks.
  void on_gradient_ready(size_t index);
  void on_backward_start();
  void finalize();

  std::vector<std::string> unused_names(bool global) const;
  std::vector<std::vector<std::string>> bucket_layout() const;
  std::vector<int64_t> bucket_bytes() const;
  void write_timeline(const std::string& path) const;

  // The state of one iteration, as seen by the hooks.
  enum class Phase {
    kIdle,        // prepare_for_backward not called since the last forward
    kArmed,       // prepared for a synchronised backward, no hook fired yet
    kArmedNoSync, // prepared for a backward under no_sync(): hooks only record use
    kBackward,    // hooks are firing; finalize is queued
    kFinalized,   // finalize ran; another backward needs another forward
  };

  const std::vector<std::string> names;
  const std::vector<at::Tensor> parameters;
  const std::shared_ptr<ProcessGroup> process_group;
  const Options options;
  bool require_sync = true;
  ReducerStats stats;
  Timeline timeline;

 private:
  using Clock = std::chrono::steady_clock;
  struct Slot {
    size_t bucket;
    size_t position; // within the bucket
  };

  void build_buckets(const std::vector<size_t>& order);
  void rebuild_buckets_if_due();
  // Marks parameter i ready without a gradient hook: its accumulated gradient if it was
  // used under no_sync(), else zeros. Caller holds mutex_.
  void mark_without_hook(size_t index);
  void copy_gradient_to_slot(size_t index);
  void launch_ready_buckets();
  void queue_finalize();
  void reset_iteration();
  void record_error(std::string message);
  void report_unused(const std::vector<int64_t>& used_by);
  std::string names_of(const std::vector<size_t>& indices) const;
  std::string rank_prefix() const;
  std::chrono::milliseconds timeout() const;
  // Gradients of at least this size are reduced in place in .grad (0: never).
  size_t in_place_min_bytes() const;

  const int rank_;
  const int world_size_;
  std::vector<std::unique_ptr<detail::Bucket>> buckets_;
  std::vector<Slot> slots_;
  // The accumulators' pointer type is shared_ptr or intrusive_ptr depending on the
  // LibTorch version; we keep them alive so that our hooks stay registered.
  using AccumulatorPtr = decltype(torch::autograd::impl::grad_accumulator(std::declval<const at::Tensor&>()));
  std::vector<AccumulatorPtr> accumulators_;
  std::vector<uintptr_t> hook_keys_;
  std::unique_ptr<detail::GraphWalker> walker_;
  at::Tensor scale_; // 1 / world size, a 0-dim CPU tensor (no allocation per hook)

  std::mutex mutex_;
  Phase phase_ = Phase::kIdle;
  bool finalize_queued_ = false;
  size_t next_to_launch_ = 0;
  std::vector<char> marked_;        // got its slot filled this backward
  std::vector<char> marked_early_;  // filled before backward (find_unused / static graph)
  std::vector<char> local_used_;    // got a gradient since the last synchronised backward
  std::vector<char> reachable_;     // scratch for the graph walk
  std::string pending_error_;       // first protocol error of this backward, thrown by finalize
  Clock::time_point backward_start_{};

  // Used flags exchanged by allgather: used_local_ (n bytes) -> used_all_ (world x n).
  at::Tensor used_local_;
  at::Tensor used_all_;
  at::Tensor used_local_host_;
  at::Tensor used_all_host_;
  std::vector<at::Tensor> used_all_rows_;

  // Learned in the first synchronised iteration.
  int64_t iteration_ = 0;
  std::vector<size_t> ready_order_;
  bool rebuilt_ = false;
  bool learned_static_ = false;
  std::vector<char> static_local_used_;
  std::vector<int64_t> static_used_by_;

  // Reporting.
  std::vector<int64_t> last_used_by_; // per parameter: how many ranks used it (last iteration)
  std::vector<char> last_local_used_;
  std::set<std::string> reported_sets_;
  Clock::time_point origin_ = Clock::now();
};

} // namespace ddp
