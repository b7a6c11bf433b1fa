// Reducer::Impl: the state machine behind ddp::Reducer. One per Reducer, shared with the
// autograd callbacks that may outlive it (they hold a weak_ptr). See docs/semantics.md
// for the protocol and docs/threads.md for which thread runs what.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/variable.h>

#include <c10/core/Event.h>

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_set>
#include <string>
#include <vector>

#include <ddp/comm_hook.h>
#include <ddp/reducer.h>

#include "bucket/bucket.h"
#include "reducer/graph_walker.h"
#include "reducer/hook_process_group.h"

namespace ddp {

class Reducer::Impl : public std::enable_shared_from_this<Impl> {
 public:
  // `parameters`: every parameter, frozen ones too (checked across ranks, not reduced).
  // `buffers`: tensors that are not reduced but must agree across ranks (checked only).
  Impl(NamedParameters parameters, NamedParameters buffers, std::shared_ptr<ProcessGroup> process_group,
       Options options);
  ~Impl();

  // Registers the gradient hooks (needs shared_from_this, so not in the constructor).
  void register_hooks();

  void prepare_for_forward();
  // ddp::Join (include/ddp/join.h, docs/semantics.md "Uneven inputs: Join").
  void arm_join(bool throw_on_early_termination, bool divide_by_initial_world_size);
  void disarm_join();
  // This rank is out of data: shadows the active ranks' steps until every rank has
  // joined, then every rank takes the authoritative rank's `final_state` (parameters and
  // buffers). `buffers` yields the module's buffers for the shadowed broadcasts.
  void join(const std::function<std::vector<at::Tensor>()>& buffers, const std::vector<at::Tensor>& final_state);
  bool join_armed() const { return join_armed_; }
  void prepare_for_backward(const std::vector<at::Tensor>& outputs);
  void sync_module_state(const std::vector<at::Tensor>& tensors);
  // Collective: checks that every rank registers a hook of the same name, before the
  // first forward (docs/semantics.md, "Communication hooks").
  void register_comm_hook(std::shared_ptr<CommHook> hook);
  const std::shared_ptr<CommHook>& comm_hook() const { return comm_hook_; }
  bool manages(const at::Tensor& tensor) const;

  // Autograd callbacks.
  void on_gradient_ready(size_t index);
  void on_backward_start();
  void finalize();

  // Reads every deferred step-check result (Options::StepCheck::kDeferred), waiting for
  // them, so that what follows (unused_names, a checkpoint) sees the last step's state.
  void settle_reads();
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
  const std::vector<at::Tensor> parameters; // the trainable ones, reduced
  const std::shared_ptr<ProcessGroup> process_group;
  const Options options;
  // The wrapped module's parameter handles in walk order, and its frozen parameters, at
  // the last full check (detail::check_module_parameters, module_state.cpp).
  std::vector<const c10::TensorImpl*> module_layout;
  std::vector<at::Tensor> module_frozen;
  // Whether this forward re-checks every parameter (set by prepare_for_forward): at the
  // first forward, after a step in which a parameter that had a gradient got none (what a
  // cast, a move or a replaced module look like from here), and every kFullCheckEvery
  // steps. Walking 800 cold tensors every forward cost ~1.4 % of bench's `small` step.
  static constexpr int64_t kFullCheckEvery = 64;
  bool full_check_this_forward = true;
  // Set by DistributedDataParallel: the full module check, run from finalize when a
  // parameter lost its gradient, so that a replaced module is an error in that step.
  std::function<void()> module_check;
  bool require_sync = true;
  ReducerStats stats;
  Timeline timeline;

 private:
  using Clock = std::chrono::steady_clock;
  Impl(NamedParameters trainable, const NamedParameters& all_parameters, NamedParameters buffers,
       std::shared_ptr<ProcessGroup> process_group, Options options);
  struct Slot {
    size_t bucket;
    size_t position; // within the bucket
  };

  // What a rank is doing when it exchanges a section header (docs/semantics.md, "Ranks
  // in step"): every group of collectives the reducer issues starts with one.
  enum class Section : int64_t {
    kModuleState = 1, // broadcasting buffers before a forward
    kReduction = 2,   // reducing the gradients of one backward
    kFinished = 3,    // this rank's reducer is being destroyed (it finished training)
    kJoin = 4,        // ddp::Join: agreeing on which ranks still have data (third field: flags)
    kCommHook = 5,    // registering a communication hook
  };
  // X's status byte, after the used flags: did this rank's backward go right? Then, for
  // kHookError, the failed bucket's index (int32): the peers name it.
  enum Status : uint8_t { kOk = 0, kLocalError = 1, kAbandoned = 2, kHookError = 3 };
  static constexpr size_t kStatusBytes = 5;
  // Writes this rank's status (and hook failure bucket) after the n used flags in `row`.
  void write_status(uint8_t* row, uint8_t status) const;
  static int32_t failed_bucket_of(const uint8_t* status);
  // What the ranks with a status other than kOk did, for the error message. `rows`: the
  // gathered rows (world x (n + kStatusBytes)).
  std::string describe_failures(const std::vector<uint8_t>& statuses, const uint8_t* rows, size_t n) const;

  void build_buckets(const std::vector<size_t>& order);
  void rebuild_buckets_if_due();
  // Exchanges {section, step, module-state syncs} with every rank (one small allgather)
  // and throws ReductionError on every rank, marking the reducer broken, when they differ.
  // Caller holds mutex_. `wait`: false only issues it (verify_header() later).
  void exchange_header(Section section, bool wait = true);
  // Verifies the reduction section's header if it is still pending; a timeout there
  // records why the section was interrupted.
  void verify_reduction_header();
  // Waits for header_work_ and compares the records (the second half of exchange_header).
  void verify_header();
  std::string describe_header(const int64_t* record) const;
  // The first hook or the outputs' pre-hook of a synchronised backward: header, finalize
  // (queued on the autograd engine unless `queue_finalize`: a Join shadow calls it).
  void begin_backward(Clock::time_point start, bool queue_finalize = true);
  // ddp::Join: the ranks' {active, reduces this step} flags, one exchange (a record of a
  // header's shape, so a rank without Join pairs it with a header and is named). Caller
  // holds mutex_; waits on the host.
  std::vector<std::pair<bool, bool>> exchange_join(bool active);
  // Sets the pre-division of the gradients (1 / the number of ranks averaged over).
  void set_divisor(int divisor);
  // Completes a backward section that an exception interrupted (before finalize), so every
  // rank has issued the same collectives again, then throws what happened. Caller holds
  // mutex_ (released while waiting).
  void settle_interrupted_backward(std::unique_lock<std::mutex>& lock);
  // Launches the interrupted section's remaining buckets and its "abandoned" status
  // exchange, without waiting (with a hook: after its futures, waited for with `lock`
  // released when given). Caller holds mutex_ and has verified the header.
  void complete_interrupted_section(std::unique_lock<std::mutex>* lock = nullptr);
  // Throws the sticky error once the ranks are known to be out of step.
  void throw_if_broken() const;
  // Throws ReductionError when a parameter's tensor, dtype, device or gradient
  // accumulator changed since construction (module->to(), set_data): its hook is gone.
  void check_parameters_unchanged() const;
  // Compares the ranks' header records (world x 3, on the host); on a difference marks
  // the reducer broken and throws ReductionError naming what each rank is doing.
  void check_header_records(const int64_t* records);

  // A step-check result whose host read is deferred (kDeferred): the collective, and the
  // host copy of what it gathered, ordered after it on the stream by `copied` (CUDA) or
  // complete with the work (CPU). Read in issue order by drain_reads.
  struct PendingRead {
    enum class Kind { kHeader, kFlags } kind;
    std::shared_ptr<Work> work;
    at::Tensor gathered;                // the allgather's output, on comm_device_
    at::Tensor host;                    // its host copy
    std::shared_ptr<c10::Event> copied; // null on a CPU group
    int64_t step;
    int64_t iteration;
  };
  // Allgathers `local` into `all` (one row per rank, allocated here); returns the work.
  std::shared_ptr<Work> gather_rows(const at::Tensor& local, at::Tensor& all);
  // Issues the gather of `local` (one row per rank, on comm_device_) and queues its host
  // read. Deferred mode only.
  std::shared_ptr<Work> gather_deferred(PendingRead::Kind kind, const at::Tensor& local);
  // A small tensor on comm_device_ holding `values`, without a host wait (pinned source).
  at::Tensor to_comm_device(const at::Tensor& values) const;
  // Reads the pending results in order: those already arrived, or all of them when
  // `block` (or when more than kMaxPendingReads are queued). Throws the sticky error when
  // a result shows the ranks out of step or a rank's backward failed. Caller holds mutex_.
  void drain_reads(bool block);
  void check_flags(const PendingRead& read);
  // Waits for a collective whose result the host does not read: a stream wait on a CUDA
  // group (its watchdog owns the deadline), a host wait with the timeout otherwise.
  void wait_ordered(Work& work) const;
  // Marks the reducer broken with `message`, gives up on the group's collectives in flight
  // (deferred mode: some may never complete) and throws ReductionError.
  // `paired_wrongly`: collectives may have paired with the wrong ones (a header mismatch).
  [[noreturn]] void fail_out_of_step(std::string message, bool paired_wrongly = true);
  std::string ranks_with(const std::vector<uint8_t>& statuses, uint8_t status) const;
  // Marks parameter i ready without a gradient hook: its accumulated gradient if it was
  // used under no_sync(), else zeros. Caller holds mutex_.
  void mark_without_hook(size_t index);
  void copy_gradient_to_slot(size_t index);
  void launch_ready_buckets();
  // Runs the communication hook on bucket b and keeps its future. A hook that throws
  // having issued no collective runs again on the zeroed bucket, so that this rank's
  // collectives still pair with its peers'; the error is recorded either way.
  void run_hook(size_t b);
  // Advances every bucket's hook future in bucket order, then waits for each and writes
  // its value into the bucket; records the first hook failure. Without the lock.
  // `interrupted`: completing a section an exception cut short (failures only logged).
  // Throws CommError (TimeoutError) when the group fails; one deadline for all buckets.
  void complete_hook_futures(int64_t iteration, bool interrupted = false);
  void record_hook_failure(size_t b, int64_t iteration, const std::string& what);
  // How a hook's future is waited for: ordered on the stream on CUDA, on the host (with
  // the timeout) otherwise.
  std::chrono::milliseconds hook_wait_timeout() const;
  // Issues the used-flags and status exchange of the backward that ends (strict: into
  // used_all_; read_later: deferred). Caller holds mutex_.
  void issue_flags(const std::vector<char>& local_used, bool read_later);
  void queue_finalize();
  void reset_iteration();
  void record_error(std::string message);
  // `flags`: the ranks' used-flag rows (world x (n + kStatusBytes)); `local_used`: this rank's.
  void report_unused(const std::vector<int64_t>& used_by, const uint8_t* flags, const std::vector<char>& local_used,
                     int64_t iteration);
  std::string names_of(const std::vector<size_t>& indices) const;
  std::string rank_prefix() const;
  std::chrono::milliseconds timeout() const;
  // Gradients of at least this size are reduced in place in .grad (0: never).
  size_t in_place_min_bytes() const;

  const int rank_;
  const int world_size_;
  const c10::Device comm_device_; // where the reducer's own collectives take their tensors
  // What each parameter was at construction: a change means its hook no longer fires.
  std::vector<c10::ScalarType> dtypes_;
  std::vector<c10::Device> devices_;
  std::vector<std::vector<int64_t>> shapes_;
  std::unordered_set<const c10::TensorImpl*> managed_;
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
  std::vector<char> marked_early_;  // known unused before backward (find_unused / static graph); filled at its start
  std::vector<char> local_used_;    // got a gradient since the last synchronised backward
  std::vector<char> reachable_;     // scratch for the graph walk
  std::string pending_error_;       // first protocol error of this backward, thrown by finalize
  Clock::time_point backward_start_{};
  bool extra_backward_ = false;     // a backward reached our outputs after they were reduced
  bool check_due_ = true;           // a parameter lost its gradient: re-check at the next forward

  // Keeping the ranks in step (docs/semantics.md). step_ counts training forwards
  // (prepare_for_forward calls), state_syncs_ module-state broadcasts.
  int64_t step_ = 0;
  int64_t state_syncs_ = 0;
  std::string broken_;              // set once the ranks are out of step: every call throws it
  std::string interrupted_cause_;   // why the current backward section was interrupted
  bool header_verified_ = false;    // this backward section's header matched on every rank
  std::shared_ptr<Work> header_work_;
  std::shared_ptr<Work> flags_work_;
  at::Tensor header_local_;         // int64 [3] on comm_device_
  at::Tensor header_all_;           // int64 [world, 3]
  std::vector<at::Tensor> header_rows_;
  std::vector<uint8_t> statuses_;   // each rank's status in the last used-flags exchange

  // Deferred step check (Options::StepCheck, docs/semantics.md).
  static constexpr size_t kMaxPendingReads = 8;
  const bool deferred_;

  // ddp::Join.
  bool join_armed_ = false;
  bool join_terminated_ = false;
  bool shadowing_ = false;        // finalize runs a Join shadow step (no parameter used here)  // throw_on_early_termination raised: join() has nothing to do
  bool join_throw_on_early_termination_ = false;
  bool join_divide_by_initial_world_size_ = true;
  int authoritative_rank_ = 0;    // the root of buffer broadcasts and of Join's final state
  double scale_value_ = 1.0;      // 1 / divisor, as scale_ holds it
  std::deque<PendingRead> pending_reads_;
  int64_t used_by_iteration_ = -1; // the iteration last_used_by_ describes

  // Used flags and status exchanged by allgather: used_local_ (n + kStatusBytes bytes) -> used_all_.
  at::Tensor used_local_;
  at::Tensor used_all_;
  at::Tensor used_local_host_;
  at::Tensor used_all_host_;
  std::vector<at::Tensor> used_all_rows_;

  // Learned in the first synchronised iteration.
  int64_t iteration_ = 0;
  std::vector<size_t> ready_order_;
  std::vector<size_t> rebuild_order_; // rank 0's ready order, received after the first iteration
  bool rebuilt_ = false;
  bool learned_static_ = false;
  std::vector<char> static_local_used_;
  std::vector<int64_t> static_used_by_;

  // Communication hook (register_comm_hook): per bucket its GradBucket parts and this
  // backward's future.
  std::shared_ptr<CommHook> comm_hook_;
  std::shared_ptr<detail::HookProcessGroup> hook_group_;
  std::vector<std::shared_ptr<const std::vector<std::string>>> bucket_names_;
  std::vector<std::shared_ptr<const std::vector<std::vector<int64_t>>>> bucket_shapes_;
  std::vector<std::shared_ptr<CommFuture>> futures_;
  int32_t hook_failed_bucket_ = -1; // first bucket whose hook failed in this backward

  // Reporting.
  std::vector<int64_t> last_used_by_; // per parameter: how many ranks used it (last iteration)
  std::vector<char> last_local_used_;
  std::set<std::string> reported_sets_;
  Clock::time_point origin_ = Clock::now();
};

} // namespace ddp
