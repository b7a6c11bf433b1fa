// BucketSet: the reducer's buckets and where each parameter's gradient goes. It owns the
// buckets (flat buffers with one slot per parameter), the slot of every parameter, the
// launch cursor (buckets launch strictly in bucket order, so every rank issues the same
// collectives in the same order), the pre-division of the gradients (1 / the number of
// ranks averaged over), the first iteration's ready order and the one rebuild from rank
// 0's order, and the write-back of the averages into .grad.
//
// Owned by Reducer::Impl and touched only under its mutex, except the buckets' works and
// tensors, which finalize waits for and reads without it (no hook fires then).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ddp/options.h>
#include <ddp/reducer_stats.h>

#include "bucket/bucket.h"
#include "bucket/bucket_assignment.h"
#include "bucket/reduction_precision.h"

namespace ddp::detail {

class BucketSet {
 public:
  struct Slot {
    size_t bucket;
    size_t position; // within the bucket
  };

  // `parameters`, `names`, `shapes`: the reducer's, which outlive this set. `sparse`
  // (one flag per parameter, outliving this set too): the parameters whose gradients are
  // sparse (SparseGradients reduces them); they get no bucket and no slot.
  BucketSet(const std::vector<at::Tensor>& parameters, const std::vector<std::string>& names,
            const std::vector<std::vector<int64_t>>& shapes, const std::vector<char>& sparse, const Options& options,
            int rank, int world_size, ReducerStats& stats);

  // Lays the buckets out for a gradient-ready `order` (parameter indices). With
  // gradient_as_bucket_view, gradients that alias the old buckets move into the new ones.
  void build(const std::vector<size_t>& order);
  // Rebuilds, locally, when due: once from rank 0's order (set_rebuild_order) when it has
  // arrived, and after each set_bucket_cap (in that order, or the current one when none
  // arrived). Every rank calls it at the same forward, so every rank rebuilds alike.
  void rebuild_if_due();
  void set_rebuild_order(std::vector<size_t> order) {
    rebuild_order_ = std::move(order);
    rebuild_due_ = true;
  }
  // Options::bucket_cap_autotune: the buckets after the next rebuild close at `mib`
  // instead of bucket_cap_mb (due at the next rebuild_if_due).
  void set_bucket_cap(double mib) {
    bucket_cap_mb_ = mib;
    rebuild_due_ = true;
  }

  // The first iteration's ready order: record_ready as gradients arrive; complete_order
  // appends the parameters that never fired, in reverse registration order.
  void record_ready(size_t index) { ready_order_.push_back(index); }
  const std::vector<size_t>& complete_order();

  size_t size() const { return buckets_.size(); }
  Bucket& bucket(size_t b) { return *buckets_[b]; }
  const Bucket& bucket(size_t b) const { return *buckets_[b]; }
  const Slot& slot(size_t index) const { return slots_[index]; }
  // Parameter i's slot, shaped like the parameter.
  const at::Tensor& view(size_t index) const { return buckets_[slots_[index].bucket]->view(slots_[index].position); }
  // Per bucket, its parameters' names and shapes (what a communication hook is handed).
  const std::shared_ptr<const std::vector<std::string>>& names_of_bucket(size_t b) const { return bucket_names_[b]; }
  const std::shared_ptr<const std::vector<std::vector<int64_t>>>& shapes_of_bucket(size_t b) const {
    return bucket_shapes_[b];
  }
  // "fc2.weight, fc2.bias": bucket b's parameters.
  std::string members_text(size_t b) const;

  // Copies parameter `index`'s gradient into its slot, divided by the number of ranks
  // (or keeps it in place: a large one-parameter bucket reduces .grad itself). A gradient
  // of another dtype, shape or device is not copied: its slot is zeroed and the message
  // returned (the backward's error).
  std::optional<std::string> copy_gradient(size_t index);
  // Fills parameter `index`'s slot without its hook: its accumulated gradient when it was
  // used under no_sync() (`used_locally`), else zeros; marks the slot ready.
  std::optional<std::string> fill_without_hook(size_t index, bool used_locally);
  // Marks parameter `index`'s slot filled; true when that completed its bucket.
  bool mark_ready(size_t index) { return buckets_[slots_[index].bucket]->mark_slot_ready(); }
  // Another run of parameter `index`'s hook before its bucket launched (MultiFire): adds
  // the run's `incoming` gradient to what the slot (or the gradient reduced in place)
  // holds, pre-divided like the first. Where .grad is that storage the accumulator has
  // already added it undivided, so only the difference is added.
  std::optional<std::string> add_again(size_t index, const at::Tensor& incoming);
  // Parameter `index`'s bucket is launched: a contribution now is late (MultiFire).
  bool launched(size_t index) const { return slots_[index].bucket < next_; }
  // What the slots are multiplied by before the reduction (1 / divisor, or 1).
  double scale() const { return scale_value_; }

  // The next bucket to launch is ready.
  bool next_ready() const { return next_ < buckets_.size() && buckets_[next_]->ready(); }
  size_t launched() const { return next_; }
  // Launches every ready bucket in bucket order through `launch(b)`, which returns
  // whether it issued a collective (false: a bucket skipped, BucketSkip).
  void launch_ready(const std::function<bool(size_t)>& launch);
  // Launches every bucket not launched yet, whatever its slots hold, reduced in its
  // flat buffer (never garbage into a user's .grad): completing an interrupted section.
  void launch_rest(const std::function<bool(size_t)>& launch);

  // Writes the averages into .grad: every parameter when `all_used`, else those some
  // rank used (used_by > 0); a parameter no rank used keeps its .grad untouched.
  // Buckets already written this step (write_back_bucket) are not written again.
  void write_back(const std::vector<int64_t>& used_by, bool all_used);
  // The same for bucket b alone, as soon as its collective completed (an overlapped
  // optimizer updates its parameters while later buckets are still reduced).
  void write_back_bucket(size_t b, const std::vector<int64_t>& used_by, bool all_used);

  // Sets the number of ranks averaged over: the pre-division of the gradients to
  // 1 / divisor, or, for ordered sums, the division after the sum.
  void set_divisor(int divisor);
  int divisor() const { return divisor_; }
  // How the gradients are summed (Options::reproducible, wire_dtype).
  const ReductionPrecision& precision() const { return precision_; }
  // Bucket b's ordered sum (precision().ordered()), its divisor included: the number of
  // ranks, or 1 when a communication hook reduces (it is handed pre-divided buckets).
  OrderedReduce ordered_reduce(size_t b) const;
  // A communication hook is installed: buckets are pre-divided again (its contract).
  void divide_before_reduction();
  // Gradients of at least this size are reduced in place in .grad (0: never).
  size_t in_place_min_bytes() const;

  // Per-iteration state: every bucket empty, nothing launched; a .grad detached at a
  // launch is given back.
  void reset();

  std::vector<std::vector<std::string>> layout() const;
  std::vector<int64_t> bytes() const;

 private:
  // The caps of the next build: the options' (bucket_cap_mb_list, else first_bucket_cap_mb
  // and bucket_cap_mb), or one bucket per kind before the rebuild with
  // first_iteration_one_bucket.
  BucketCaps caps() const;
  // At bucket b's launch, a .grad that is the storage being reduced (a bucket view, a
  // gradient reduced in place) is taken off its parameter until the write-back, so that a
  // late run of the accumulator (MultiFire) writes a new .grad, not into a collective in
  // flight.
  void detach_grads(size_t b);

 public:
  // Gives back the .grad detached at the launches (the write-back and reset() do it).
  void reattach_grads();
  // Parameters whose runs per backward are known (MultiFire::settled): not detached.
  void set_settled(const std::vector<char>* settled) { settled_ = settled; }

 private:

  const std::vector<at::Tensor>& parameters_;
  const std::vector<std::string>& names_;
  const std::vector<std::vector<int64_t>>& shapes_;
  const std::vector<char>& sparse_;
  const Options& options_;
  const int rank_;
  const int world_size_;
  ReducerStats& stats_;

  std::vector<std::unique_ptr<Bucket>> buckets_;
  std::vector<Slot> slots_;
  std::vector<std::shared_ptr<const std::vector<std::string>>> bucket_names_;
  std::vector<std::shared_ptr<const std::vector<std::vector<int64_t>>>> bucket_shapes_;
  size_t next_ = 0; // the next bucket to launch
  std::vector<char> written_; // per bucket: written back this step
  const ReductionPrecision precision_;
  // Ordered sums divide after the sum (Options::reproducible's promise), so the copies
  // into the buckets do not scale.
  bool divide_after_;
  int divisor_;
  at::Tensor scale_; // 1 / divisor (1 when dividing after), a 0-dim CPU tensor (no allocation per hook)
  double scale_value_ = 1.0;
  std::vector<size_t> ready_order_;   // this rank's, in the first iteration
  std::vector<size_t> rebuild_order_; // rank 0's, received after the first iteration
  std::vector<size_t> built_order_;   // the order of the last build
  bool rebuilt_ = false;
  bool rebuild_due_ = false;
  double bucket_cap_mb_; // Options::bucket_cap_mb, or autotune's candidate or choice
  const std::vector<char>* settled_ = nullptr;
  std::vector<std::pair<size_t, at::Tensor>> detached_; // (parameter, its .grad) until the write-back
};

} // namespace ddp::detail
