// The NCCL backend's one entry point.
#pragma once

#include <c10/core/Device.h>

#include <memory>
#include <optional>

#include <ddp/process_group.h>

#include "comm/rendezvous.h"

namespace ddp::nccl {

// A process group over every rank of the job, on one CUDA device per rank: `device`
// when given (an index-less "cuda" means LOCAL_RANK's), else cuda:LOCAL_RANK (rank modulo
// the visible devices when the launcher sets no local rank). Makes it this thread's
// current device. Rank 0's NCCL id travels through the rendezvous the environment
// `config` names (comm/rendezvous.h: mpirun, or a c10d store from torchrun's variables,
// Slurm's, or DDP_INIT_METHOD).
// Throws InvalidArgumentError for a bad device or environment, CommError/TimeoutError
// when the rendezvous or NCCL fails.
std::shared_ptr<ProcessGroup> create(const RendezvousConfig& config, std::optional<c10::Device> device = std::nullopt);

} // namespace ddp::nccl
