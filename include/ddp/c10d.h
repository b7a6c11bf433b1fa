// PyTorch's process groups under libddp's reducer. A trainer that already has a c10d
// group — one it built itself (c10d::ProcessGroupGloo, c10d::ProcessGroupNCCL,
// c10d::ProcessGroupMPI), a subgroup, or the default group torch.distributed made —
// hands it to DistributedDataParallel through from_c10d():
//
//   #include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>   // the trainer's own
//   auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
//   ddp::DistributedDataParallel<Net> model(net, ddp::from_c10d(gloo));
//
// The group keeps its own timeout and transport; libddp checks arguments like its own
// backends, numbers the collectives, and reports c10d's failures as ddp::CommError
// (ddp::TimeoutError for a wait that ran out). Available when libddp was built with the
// c10d headers (DDP_HAVE_C10D in <ddp/config.h>); this header itself needs none of them.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/intrusive_ptr.h>

#include <memory>
#include <type_traits>

#include <ddp/process_group.h>

namespace c10d {
class ProcessGroup;
class Backend;
} // namespace c10d

namespace ddp {
namespace detail {
std::shared_ptr<ProcessGroup> from_c10d_process_group(const c10::intrusive_ptr<c10d::ProcessGroup>& group,
                                                      c10::Device device);
std::shared_ptr<ProcessGroup> from_c10d_backend(const c10::intrusive_ptr<c10d::Backend>& group, c10::Device device);
} // namespace detail

// `group`: a c10d::ProcessGroup or a c10d::Backend (any subclass). `device`: where the
// group takes its tensors — CPU for gloo and MPI, the rank's GPU for NCCL. Throws
// InvalidArgumentError for a null group, or when this build of libddp has no c10d support.
template <typename Group>
std::shared_ptr<ProcessGroup> from_c10d(const c10::intrusive_ptr<Group>& group,
                                        c10::Device device = c10::Device(c10::kCPU)) {
  if constexpr (std::is_base_of_v<c10d::Backend, Group>) {
    return detail::from_c10d_backend(group, device);
  } else {
    return detail::from_c10d_process_group(group, device);
  }
}

} // namespace ddp
