// ddp::Reducer: averages the gradients of a set of named parameters across the ranks
// of a process group, bucket by bucket, while the backward pass still runs.
// DistributedDataParallel owns one; it is usable on its own for any parameter list
// (TorchScript modules, custom parameter sets, a trainer with its own forward).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ddp/comm_hook.h>
#include <ddp/options.h>
#include <ddp/process_group.h>
#include <ddp/reducer_stats.h>
#include <ddp/timeline.h>

namespace torch::nn {
class Module;
}

namespace ddp {

class Reducer;
namespace detail {
void check_module_parameters(Reducer& reducer, const torch::nn::Module& module);
void watch_module(Reducer& reducer, std::weak_ptr<torch::nn::Module> module);
}

class Reducer {
 public:
  using NamedParameters = std::vector<std::pair<std::string, at::Tensor>>;

  // Parameters that do not require grad are not reduced. One collective verifies that
  // every rank agrees on the options that shape the collectives (bucket caps,
  // gradient_as_bucket_view, in_place_min_mb, broadcast_buffers, init_sync, static_graph,
  // step_check), on every parameter, frozen ones included (count, names, shapes, dtypes,
  // which are frozen), and
  // on `buffers` (tensors that are not reduced but must match, e.g. to be broadcast);
  // throws ModelMismatchError on every rank otherwise, and InvalidArgumentError when no
  // parameter requires grad or a parameter is already managed by another Reducer.
  // Collective: every rank must construct its Reducer at the same point.
  Reducer(NamedParameters parameters, std::shared_ptr<ProcessGroup> process_group, Options options = {},
          NamedParameters buffers = {});
  ~Reducer();
  Reducer(const Reducer&) = delete;
  Reducer& operator=(const Reducer&) = delete;

  // Call before each training forward (grad mode on; not before a forward under
  // torch::NoGradGuard). Counts the step, checks that the previous backward finished
  // (completing an interrupted one with the other ranks, then throwing ReductionError)
  // and that the parameters were not changed since construction, and once rebuilds the
  // buckets in the gradient-ready order rank 0 observed in the first iteration.
  void prepare_for_forward();
  // Call after each forward with the tensors it produced (the loss's ancestors).
  // Arms the hooks for one backward; with find_unused_parameters, walks the autograd
  // graph from `outputs` and marks unreachable parameters ready at once.
  void prepare_for_backward(const std::vector<at::Tensor>& outputs);

  // Broadcasts rank 0's values of `tensors` (module buffers) to every rank, after a
  // small header exchange that checks every rank is at the same step (ReductionError on
  // every rank, naming each rank's step, otherwise). Collective; blocking.
  void sync_module_state(const std::vector<at::Tensor>& tensors);

  // Replaces each bucket's all-reduce with `hook` (ddp::hooks, or a ddp::CommHook of your
  // own; docs/api.md, "Communication hooks"). Collective: every rank registers a hook of the
  // same name, once, before the first forward; InvalidArgumentError otherwise (a second
  // hook, a null one, a step already begun), ModelMismatchError when the ranks' hooks
  // differ, ReductionError on every rank when one rank does not register.
  void register_comm_hook(std::shared_ptr<CommHook> hook);
  // The registered hook, or null.
  const std::shared_ptr<CommHook>& comm_hook() const;

  // The seam of ddp::OverlappedOptimizer (include/ddp/overlapped_optimizer.h), open to a
  // trainer of its own. At the end of each synchronised backward `callback` runs on the
  // thread that finalises it, once per bucket, with the bucket's index and its parameters'
  // indices (parameters() order), as soon as their averages are in .grad: a bucket whose
  // every parameter got a gradient on this rank as soon as its collective completes, while
  // the later buckets are still on the wire; the others once every rank's used flags are
  // read. It runs only while `owner` lives. It must not throw (keep the error and raise it
  // later) nor call into the reducer. A step that ends in an error on some rank reports no
  // further bucket. One callback at a time: InvalidArgumentError while another live owner
  // holds it, or while ddp::Join is armed (a joined rank shadows steps it does not take).
  using ReducedCallback = std::function<void(size_t bucket, const std::vector<size_t>& parameters)>;
  void set_reduced_callback(std::weak_ptr<void> owner, ReducedCallback callback);
  // The parameters this reducer reduces (the trainable ones), in parameter_names() order.
  const std::vector<at::Tensor>& parameters() const;

  // True when `tensor` is one of the parameters this reducer reduces.
  bool manages(const at::Tensor& tensor) const;

  // false while a no_sync() guard is alive: gradients accumulate locally.
  bool require_sync() const;
  void set_require_sync(bool require_sync);

  // Reads every pending result of the deferred step check (Options::step_check), waiting
  // for them, and throws what they show (ReductionError, CommError); nothing to do in
  // strict mode. Call it before saving a checkpoint: with the deferred check a failure in
  // the last steps shows only at the next reducer call, or in a log line at destruction.
  void synchronize();

  // ddp::Join's side of the reducer (include/ddp/join.h; docs/semantics.md): from
  // arm_join() on, each training forward first agrees with every rank on which ranks still
  // have data; join() shadows the active ranks' steps until every rank has joined, then
  // every rank takes the last active rank's `final_state` (parameters and buffers);
  // `buffers` yields the module's buffers for the broadcasts it shadows.
  void arm_join(bool throw_on_early_termination, bool divide_by_initial_world_size);
  void disarm_join();
  void join(const std::function<std::vector<at::Tensor>()>& buffers, const std::vector<at::Tensor>& final_state);

  // Names of the parameters that received no gradient on any rank in the last
  // synchronised iteration (their .grad was left untouched).
  std::vector<std::string> unused_parameters() const;
  // Names of the parameters that received no gradient on this rank in the last
  // synchronised iteration (they contributed zeros).
  std::vector<std::string> locally_unused_parameters() const;

  // Parameter names per bucket, in bucket (launch) order.
  std::vector<std::vector<std::string>> bucket_layout() const;
  // Size in bytes of each bucket, in bucket order.
  std::vector<int64_t> bucket_bytes() const;
  // Names of the parameters the reducer manages, in registration order.
  const std::vector<std::string>& parameter_names() const;

  const ReducerStats& stats() const;
  const Timeline& timeline() const;
  // Turns event recording on or off (DDP_TIMELINE / Options::timeline_path turn it on).
  void set_timeline_enabled(bool enabled);
  // Writes the timeline recorded so far to `path` (".rank<R>" is inserted).
  void write_timeline(const std::string& path) const;

  const Options& options() const;
  const std::shared_ptr<ProcessGroup>& process_group() const;

  class Impl;

 private:
  friend void detail::check_module_parameters(Reducer& reducer, const torch::nn::Module& module);
  friend void detail::watch_module(Reducer& reducer, std::weak_ptr<torch::nn::Module> module);
  std::shared_ptr<Impl> impl_;
};

} // namespace ddp
