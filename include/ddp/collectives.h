// Collective helpers built on ddp::ProcessGroup, used by DistributedDataParallel and
// available to trainers (e.g. to broadcast their own state from rank 0).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include <ddp/process_group.h>

namespace ddp {

// Broadcasts `tensors` from `root` in place, coalesced into one flat buffer per
// (device, dtype) so that many small tensors cost few collectives. On a CPU group it
// blocks until the tensors hold root's values; on a CUDA group (NCCL) it returns once the
// broadcast and the copies into the tensors are queued on the current stream, which any
// later use of them on that stream follows.
void broadcast_coalesced(ProcessGroup& process_group, const std::vector<at::Tensor>& tensors, int root);

// Checks with one collective that every rank holds the same list of named tensors
// (count, names, shapes, dtypes). On a mismatch every rank throws ModelMismatchError
// naming the first differing tensor and the ranks that differ. `what` names the list
// in the message ("parameter", "buffer").
void verify_same_tensors(ProcessGroup& process_group,
                         const std::vector<std::pair<std::string, at::Tensor>>& named,
                         const std::string& what);

// Checks with one collective (an allgather of one checksum per tensor) that every rank
// holds the same values in `named`; the ranks must already agree on the names and shapes
// (verify_same_tensors). On a difference every rank throws ModelMismatchError naming the
// first differing tensor as "<what> 'NAME'", the ranks whose values differ from rank 0's,
// and `fix`, what the user should do. `what` names the list ("parameter", "state").
void verify_same_values(ProcessGroup& process_group, const std::vector<std::pair<std::string, at::Tensor>>& named,
                        const std::string& what, const std::string& fix);

} // namespace ddp
