// Creating a process group.
#pragma once

#include <c10/core/Device.h>

#include <memory>
#include <optional>
#include <string>

#include <ddp/process_group.h>

namespace ddp {

// backend: "mpi", "nccl" or "auto". "auto" picks NCCL when `device` is a CUDA device
// and the NCCL backend was built, else MPI when it was built (launch under mpirun);
// anything else is an InvalidArgumentError that says which backends this build has.
std::shared_ptr<ProcessGroup> init_process_group(
    const std::string& backend = "auto",
    std::optional<c10::Device> device = std::nullopt);

} // namespace ddp
