// SparseGradients: the parameters whose gradients are sparse (Options::
// expect_sparse_gradients; DistributedDataParallel adds every Embedding and EmbeddingBag
// built with sparse(true)). Each stays out of the dense buckets: its hook takes this
// rank's sparse .grad as it is, finalize sums every rank's (SparseSum: gathered, added in
// rank order, divided) after the section's status exchange, and the result, sparse and
// coalesced, replaces .grad where some rank used the parameter (as the buckets do).
//
// Owned by Reducer::Impl: take/reset/write_back under its mutex; exchange is a blocking
// collective, called with the mutex released (no hook fires then).
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ddp/process_group.h>
#include <ddp/reducer_stats.h>

namespace ddp::detail {

class SparseGradients {
 public:
  // `parameters`, `names`: the reducer's (they outlive this). `expected`: the names of
  // the sparse ones (each a trainable parameter: ConstructionCheck checked it).
  SparseGradients(const std::vector<at::Tensor>& parameters, const std::vector<std::string>& names,
                  const std::vector<std::string>& expected, int rank);

  bool any() const { return !members_.empty(); }
  // One flag per parameter: 1 where the gradient is expected sparse.
  const std::vector<char>& mask() const { return mask_; }
  bool expects(size_t index) const { return mask_[index] != 0; }

  // Hook time: parameter `index`'s .grad is this rank's contribution. A gradient that is
  // not sparse, or not of the parameter's size, dtype and device, contributes nothing
  // and its message is returned (the backward's error, on every rank).
  std::optional<std::string> take(size_t index);
  // Without a hook this backward: its no_sync() accumulation (`used_locally`), else nothing.
  std::optional<std::string> take_without_hook(size_t index, bool used_locally);
  // An interrupted section: this rank contributes nothing.
  void drop_contributions();

  // Collective, blocking: every rank's contributions summed and divided by `divisor` (the
  // ranks averaged over). Returns an error (the same on every rank), or "".
  std::string exchange(ProcessGroup& group, int divisor, std::chrono::milliseconds timeout, ReducerStats& stats);
  // The sums into .grad, for every sparse parameter when `all_used`, else those some rank
  // used (used_by > 0): a parameter no rank used keeps its .grad untouched.
  void write_back(const std::vector<int64_t>& used_by, bool all_used);
  // A new iteration: no contribution, no sum.
  void reset();

 private:
  // Member k's contribution when it has none: an empty sparse tensor of its size.
  at::Tensor empty_of(size_t k) const;

  const std::vector<at::Tensor>& parameters_;
  const std::vector<std::string>& names_;
  const int rank_;
  std::vector<char> mask_;
  std::vector<size_t> members_;          // the sparse parameters' indices, in registration order
  std::vector<size_t> position_;         // parameter index -> k (members_ order); unused for dense ones
  std::vector<at::Tensor> contributions_; // per member, this backward (undefined: none)
  std::vector<at::Tensor> sums_;          // per member, after exchange
};

} // namespace ddp::detail
