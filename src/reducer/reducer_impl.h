// Reducer::Impl: the iteration state machine behind ddp::Reducer. It holds the phase of
// the current iteration and which parameters are ready, and sequences the parts that own
// everything else (docs/architecture.md draws them):
//   ConstructionCheck   the checks before the first collective, and that collective
//   ParameterSnapshot   what the parameters were when wrapped
//   GradientHooks       the accumulators' hooks and the unused-parameter graph walk
//   StepCheck           section headers, deferred reads, the sticky "broken" error
//   StatusRow           the used flags and status each rank sends at the end of backward
//   BucketSet           buckets, slots, launch order, write-back into .grad
//   SparseGradients     the sparse gradients (embeddings): gathered and summed apart
//   BucketSkip          the unused-parameter bitmap in the header; buckets no rank used
//   MultiFire           hooks that run more than once per backward; late contributions
//   HookRunner          a communication hook's runs, futures and failures
//   JoinState           ddp::Join's flags, divisor and authoritative rank
//   InterruptedBackward completing a section an exception cut short
//   UnusedReport        which parameters got no gradient, and the warning naming them
//   BucketCapAutotuner  Options::bucket_cap_autotune's schedule, timings and choice
// One per Reducer, shared with the autograd callbacks that may outlive it (they hold a
// weak_ptr). docs/threads.md says which thread runs what and where the mutex is released.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ddp/comm_hook.h>
#include <ddp/reducer.h>

#include "reducer/bucket_cap_autotuner.h"
#include "reducer/bucket_set.h"
#include "reducer/bucket_skip.h"
#include "reducer/construction_check.h"
#include "reducer/gradient_hooks.h"
#include "reducer/hook_runner.h"
#include "reducer/interrupted_backward.h"
#include "reducer/join_state.h"
#include "reducer/multi_fire.h"
#include "reducer/parameter_snapshot.h"
#include "reducer/sparse_gradients.h"
#include "reducer/status_row.h"
#include "reducer/step_check.h"
#include "reducer/unused_report.h"

namespace ddp {

class Reducer::Impl : public std::enable_shared_from_this<Impl> {
 public:
  // `parameters`: every parameter, frozen ones too (checked across ranks, not reduced).
  // `buffers`: tensors that are not reduced but must agree across ranks (checked only).
  Impl(const NamedParameters& parameters, const NamedParameters& buffers, std::shared_ptr<ProcessGroup> process_group,
       Options options);
  ~Impl();

  // Registers the gradient hooks (after construction: the callbacks need weak_from_this).
  void register_hooks();

  void prepare_for_forward();
  void prepare_for_backward(const std::vector<at::Tensor>& outputs);
  void sync_module_state(const std::vector<at::Tensor>& tensors);
  // ddp::Join (include/ddp/join.h, docs/semantics.md "Uneven inputs: Join").
  void arm_join(bool throw_on_early_termination, bool divide_by_initial_world_size);
  void disarm_join();
  // This rank is out of data: shadows the active ranks' steps until every rank has
  // joined, then every rank takes the authoritative rank's `final_state` (parameters and
  // buffers). `buffers` yields the module's buffers for the shadowed broadcasts.
  void join(const std::function<std::vector<at::Tensor>()>& buffers, const std::vector<at::Tensor>& final_state);
  // Collective: checks that every rank registers a hook of the same name, before the
  // first forward (docs/semantics.md, "Communication hooks").
  void register_comm_hook(std::shared_ptr<CommHook> hook);
  const std::shared_ptr<CommHook>& comm_hook() const { return hook_runner_.hook(); }
  bool manages(const at::Tensor& tensor) const { return snapshot_.contains(tensor); }
  // Reducer::set_reduced_callback.
  void set_reduced_callback(std::weak_ptr<void> owner, ReducedCallback callback);

  // Autograd callbacks. `incoming`: the gradient the accumulator's run added.
  void on_gradient_ready(size_t index, const at::Tensor& incoming);
  void on_backward_start();
  void finalize();
  // The end-of-backward callback of graph task `task`: finalize, unless that task was a
  // nested (reentrant) backward inside the backward being reduced (docs/threads.md).
  void on_graph_task_end(int task);
  // A node of the enclosing graph task ran after a nested one ended: queue the
  // end-of-backward callback there (iteration `iteration` only).
  void requeue_finalize(int64_t iteration);

  // Reads every deferred step-check result, waiting for them, so that what follows
  // (unused_names, a checkpoint) sees the last step's state.
  void settle_reads();
  std::vector<std::string> unused_names(bool global) const { return unused_.names(global); }
  std::vector<std::vector<std::string>> bucket_layout() const { return buckets_.layout(); }
  std::vector<int64_t> bucket_bytes() const { return buckets_.bytes(); }
  void write_timeline(const std::string& path) const;

  // The state of one iteration, as seen by the hooks.
  enum class Phase {
    kIdle,        // prepare_for_backward not called since the last forward
    kArmed,       // prepared for a synchronised backward, no hook fired yet
    kArmedNoSync, // prepared for a backward under no_sync(): hooks only record use
    kBackward,    // hooks are firing; finalize is queued
    kFinalized,   // finalize ran; another backward needs another forward
  };

  // What DistributedDataParallel's module check keeps between forwards (module_state.cpp).
  struct ModuleWatch {
    // The wrapped module's parameter handles in walk order, and its frozen parameters, at
    // the last full check (detail::check_module_parameters).
    std::vector<const c10::TensorImpl*> layout;
    std::vector<at::Tensor> frozen;
    // Whether this forward re-checks every parameter: at the first forward, after a step in
    // which a parameter that had a gradient got none (what a cast, a move or a replaced
    // module look like from here), and every kFullCheckEvery steps. Walking 800 cold
    // tensors every forward cost ~1.4 % of bench's `small` step.
    bool full_check_this_forward = true;
    // The full module check, run from finalize when a parameter lost its gradient, so that
    // a replaced module is an error in that step.
    std::function<void()> check;
  };
  static constexpr int64_t kFullCheckEvery = 64;

  const std::vector<std::string> names;
  const std::vector<at::Tensor> parameters; // the trainable ones, reduced
  const std::shared_ptr<ProcessGroup> process_group;
  const Options options;
  ModuleWatch module_watch;
  bool require_sync = true;
  ReducerStats stats;
  Timeline timeline;

 private:
  using Clock = std::chrono::steady_clock;
  Impl(detail::ConstructionCheck::Result checked, std::shared_ptr<ProcessGroup> process_group);

  // Per-parameter flags of the current iteration.
  struct Marks {
    std::vector<char> marked;       // got its slot filled this backward
    std::vector<char> marked_early; // known unused before backward (find_unused / static graph)
    std::vector<char> local_used;   // got a gradient since the last synchronised backward
    std::vector<char> reachable;    // scratch for the graph walk
    std::vector<char> unused;       // scratch: known unused at the start of backward (BucketSkip)
    std::vector<char> row;          // scratch: this rank's used-flags row bytes (MultiFire::encode)
    std::vector<char> late;         // scratch: late on some rank (MultiFire::decode_late)
  };
  // static_graph: what the first synchronised iteration used, here and on every rank.
  struct StaticGraph {
    bool learned = false;
    std::vector<char> local_used;
    std::vector<int64_t> used_by;
  };

  // --- the phases' edges ---
  // The first hook or the outputs' pre-hook of a synchronised backward: header, finalize
  // (queued on the autograd engine unless `queue_finalize`: a Join shadow calls it).
  void begin_backward(Clock::time_point start, bool queue_finalize = true);
  // A new iteration: every per-iteration part reset.
  void reset_iteration();
  // Queues the end-of-backward callback on the current graph task, once per task.
  void queue_finalize();
  // Completes an interrupted backward with the other ranks, then throws (lock held).
  [[noreturn]] void settle_interrupted_backward(std::unique_lock<std::mutex>& lock);
  // A forward through the wrapper that had no backward: nothing was launched.
  void forget_unfinished_forward();

  // --- finalize's steps (finalize.cpp) ---
  void sweep_unmarked();
  void check_lost_gradients();
  void check_static_graph(const std::vector<char>& local_used, int64_t iteration);
  bool can_read_later(const std::vector<char>& local_used, int64_t iteration) const;
  // Issues the used-flags and status exchange of the backward that ends.
  void issue_flags(const std::vector<char>& local_used, bool read_later);
  // Waits for the section's collectives (without the lock); returns the failure.
  // With a reduced callback, each bucket whose parameters all got a gradient here
  // (`local_used`) is written back and reported as soon as its collective completes.
  std::exception_ptr wait_for_section(int64_t iteration, bool read_later, const std::vector<char>& local_used);
  // Writes bucket b back (if not yet) and hands it to the reduced callback, timed.
  void report_reduced(size_t b, int64_t iteration);
  bool reports_early(size_t b, const std::vector<char>& local_used) const;
  // After the follow-ups: an error when a late contribution reached a bucket already reported.
  void check_reported_late();
  // The sparse gradients' exchange (lock released); an interrupted section contributes
  // nothing. Returns its error ("" when none).
  std::string exchange_sparse(bool contribute);
  // Reads the ranks' used counts and statuses; true when every rank's status is kOk.
  bool read_used_by(const std::vector<char>& local_used, bool read_later);
  // MultiFire: whether late contributions are reduced after the buckets in this backward
  // (the same on every rank: every rank reads the rows now), and that reduction: one
  // all-reduce per parameter some rank contributed late to, waited for without the lock;
  // returns the failure. add_late_averages adds them to .grad after the write-back.
  bool follow_up_allowed(int64_t iteration) const;
  void check_late_runs(int64_t iteration);
  std::exception_ptr reduce_late(std::unique_lock<std::mutex>& lock);
  void add_late_averages();
  // Iteration 0: every rank takes rank 0's ready order for the rebuild.
  void share_ready_order(std::unique_lock<std::mutex>& lock, bool all_ok);
  // Options::bucket_cap_autotune, at the end of synchronised `iteration` (its backward
  // ended at `end`): times it, sets the next candidate's cap, or makes the choice.
  void tune_bucket_cap(std::unique_lock<std::mutex>& lock, int64_t iteration, bool all_ok, Clock::time_point end);
  // Every rank's medians to rank 0 (one allgather), rank 0's choice to every rank (one
  // broadcast); every rank rebuilds with it at the next forward.
  void decide_bucket_cap(std::unique_lock<std::mutex>& lock, int64_t iteration);
  // Throws this step's error, if any (after the iteration has ended).
  void throw_step_error(std::string error, bool all_ok, int64_t step);

  // --- the parts' glue ---
  void verify_reduction_header();
  void mark_without_hook(size_t index);
  // A second or later run of parameter `index`'s hook in this backward (MultiFire).
  void on_gradient_again(size_t index, const at::Tensor& incoming);
  void launch_ready_buckets();
  // Issues bucket b's all-reduce (or its hook); false when no rank used any of its
  // parameters and it is skipped (BucketSkip).
  bool launch_bucket(size_t b);
  bool skips_bucket(size_t b);
  void record_error(std::string message);
  void record_hook_failure(size_t b, int64_t iteration, const std::string& what);
  // Reads one deferred used-flags row set (StepCheck's FlagsReader).
  void check_flags(const detail::StepCheck::PendingRead& read);
  std::string describe_failures(const std::vector<uint8_t>& statuses, const uint8_t* rows) const;
  std::string rank_prefix() const;

  const int rank_;
  const int world_size_;
  detail::ParameterSnapshot snapshot_;
  detail::StepCheck step_check_;
  detail::StatusRow status_row_;
  detail::SparseGradients sparse_; // before buckets_, which keeps its mask
  detail::BucketSet buckets_;
  detail::BucketSkip skip_;
  detail::HookRunner hook_runner_;
  detail::JoinState join_;
  detail::InterruptedBackward recovery_;
  detail::UnusedReport unused_;
  detail::BucketCapAutotuner autotune_;
  detail::MultiFire multi_fire_;

  std::mutex mutex_;
  Phase phase_ = Phase::kIdle;
  // The graph tasks (torch::autograd::get_current_graph_task_id) with an end-of-backward
  // callback queued in this backward; the last one, checked first.
  std::vector<int> finalize_tasks_;
  int last_task_ = kNoTask;
  static constexpr int kNoTask = -2;
  bool late_anywhere_ = false;       // this backward's follow-up reduces late contributions
  int64_t iteration_ = 0;            // synchronised backward passes finalised
  Marks marks_;
  StaticGraph static_graph_;
  std::string pending_error_;        // first protocol error of this backward, thrown by finalize
  Clock::time_point backward_start_{};
  bool extra_backward_ = false;      // a backward reached our outputs after they were reduced
  bool check_due_ = true;            // a parameter lost its gradient: re-check at the next forward
  Clock::time_point origin_ = Clock::now();
  // Reducer::set_reduced_callback; `reported_` marks the buckets handed to it this step.
  std::weak_ptr<void> reduced_owner_;
  ReducedCallback reduced_callback_;
  std::vector<char> reported_;
  // Last: destroyed first, so no hook fires into a half-destroyed Impl.
  detail::GradientHooks gradient_hooks_;
};

} // namespace ddp
