// The MPI backend's one entry point.
#pragma once

#include <memory>

#include <ddp/process_group.h>

namespace ddp::mpi {

// A process group over all ranks of the MPI job (MPI_COMM_WORLD). Starts MPI on first use.
std::shared_ptr<ProcessGroup> create();

} // namespace ddp::mpi
