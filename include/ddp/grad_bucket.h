// ddp::GradBucket: what a communication hook (ddp::CommHook) is given for one bucket of
// one backward: the flat buffer holding this rank's gradients, a view per parameter, the
// parameters' names, and where the bucket stands in the backward. Made by the reducer; a
// hook may also make one (the compress wrapper hands its inner hook a compressed copy).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ddp {

class ProcessGroup;

class GradBucket {
 public:
  // `buffer`: 1-D and contiguous; `shapes[k]` is the k-th parameter's shape, its values
  // the next numel(shapes[k]) elements of `buffer`. `names` and `shapes` are shared, not
  // copied: the reducer keeps one per bucket.
  GradBucket(size_t index, bool is_last, at::Tensor buffer,
             std::shared_ptr<const std::vector<std::string>> names,
             std::shared_ptr<const std::vector<std::vector<int64_t>>> shapes, ProcessGroup& process_group,
             int64_t iteration);

  // Position of the bucket in launch order (from 0). Buckets are numbered anew when the
  // reducer rebuilds them after the first iteration: key lasting state by parameter name.
  size_t index() const { return index_; }
  // The last bucket of this backward: a hook counting iterations counts here.
  bool is_last() const { return is_last_; }
  // This rank's gradients, already divided by the number of ranks averaged over: the sum
  // over the ranks of the buffers is the average. (PyTorch hands hooks undivided gradients
  // and its hooks divide; libddp divides while copying into the bucket, in one pass, so a
  // summing hook is all a hook needs to be, and float16 never sees the undivided sum.)
  // A hook may change it in place (error feedback does).
  const at::Tensor& buffer() const { return buffer_; }
  // One view of buffer() per parameter, shaped like it, in slot order.
  const std::vector<at::Tensor>& gradients() const;
  const std::vector<std::string>& parameter_names() const { return *names_; }
  const std::vector<std::vector<int64_t>>& parameter_shapes() const { return *shapes_; }
  // The reducer's synchronised iteration (backward passes reduced so far, from 0).
  int64_t iteration() const { return iteration_; }
  // The group the hook communicates over. Every collective a hook issues goes through it,
  // in the same order on every rank (docs/api.md, "Writing a hook").
  ProcessGroup& process_group() const { return *process_group_; }

  // The same bucket over another buffer of the same element count (a compressed copy).
  GradBucket with_buffer(at::Tensor buffer) const;

 private:
  size_t index_;
  bool is_last_;
  at::Tensor buffer_;
  std::shared_ptr<const std::vector<std::string>> names_;
  std::shared_ptr<const std::vector<std::vector<int64_t>>> shapes_;
  ProcessGroup* process_group_;
  int64_t iteration_;
  mutable std::vector<at::Tensor> gradients_; // made on first use
};

} // namespace ddp
