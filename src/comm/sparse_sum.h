// SparseSum: the sum of sparse COO tensors over the ranks of a ProcessGroup, written once
// on top of the group's allgather so that every backend (MPI, NCCL, c10d gloo/nccl, the
// test's thread ranks) has it without a collective of its own. The ranks' nonzero counts
// differ, and allgather moves equal sizes, so it takes two rounds:
//   counts    one small allgather of every tensor's (nnz, sparse_dim) on every rank;
//   entries   per tensor some rank holds entries of: its indices and its values, padded
//             to the largest count, allgathered, and trimmed to each rank's count;
//   add       the ranks' coalesced tensors added in rank order ((g_0 + g_1) + g_2 ...),
//             then divided: every rank does the same IEEE operations on the same inputs,
//             so every rank gets the same bits, in every run (on CPU: the sparse add of
//             two coalesced tensors is a merge, one add per index present in both).
// PyTorch's DDP allgathers the same way (its sparse all-reduce in ProcessGroupGloo).
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <ddp/process_group.h>

namespace ddp::detail {

class SparseSum {
 public:
  struct Result {
    std::vector<at::Tensor> sums; // per input: the sum over the ranks / divisor, coalesced
    std::string error;            // the same on every rank; the sums are undefined then
    int64_t collectives = 0;      // issued by this call
    int64_t bytes_sent = 0;       // what this rank put into the entries' allgathers
  };

  // Collective, blocking (up to `timeout` per wait): every rank passes as many sparse
  // tensors, in the same order, of the same sizes and dtypes; an empty one (nnz 0) where
  // it has nothing. A tensor whose ranks disagree on the number of sparse dimensions is an
  // error in Result::error on every rank (nothing of it is exchanged). Inputs need not be
  // coalesced.
  static Result run(ProcessGroup& group, const std::vector<at::Tensor>& locals, int64_t divisor,
                    std::chrono::milliseconds timeout);

  // The arithmetic alone: the coalesced `parts` (rank r's at r) added in rank order, the
  // values then divided by `divisor` (1: not divided). Coalesced.
  static at::Tensor add_in_rank_order(const std::vector<at::Tensor>& parts, int64_t divisor);
};

} // namespace ddp::detail
