// The process groups libddp builds on PyTorch's c10d backends, from a rendezvous
// configuration: each on a c10d store under the configuration's prefix (store_factory.h),
// after a store rendezvous that names the ranks that did not arrive.
#pragma once

#include <c10/core/Device.h>

#include <memory>
#include <optional>

#include <ddp/config.h>
#include <ddp/process_group.h>

#include "comm/rendezvous.h"

namespace ddp::c10d_adapter {

#if DDP_HAVE_GLOO
// init_process_group("gloo"): c10d::ProcessGroupGloo on the CPU. GLOO_SOCKET_IFNAME picks
// the network interface, else the one this host's name resolves to (as PyTorch does).
std::shared_ptr<ProcessGroup> create_gloo(const RendezvousConfig& config);
#endif

#if DDP_HAVE_C10D_NCCL
// init_process_group("c10d-nccl"): PyTorch's c10d::ProcessGroupNCCL on the rank's GPU
// (`device`, else LOCAL_RANK, else rank modulo the visible devices).
std::shared_ptr<ProcessGroup> create_c10d_nccl(const RendezvousConfig& config, std::optional<c10::Device> device);
#endif

} // namespace ddp::c10d_adapter
