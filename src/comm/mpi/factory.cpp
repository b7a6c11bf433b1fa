#include "comm/mpi/factory.h"

#include <cstdlib>

#include "comm/mpi/process_group_mpi.h"

namespace ddp::mpi {

std::shared_ptr<ProcessGroup> create() {
  return std::make_shared<ProcessGroupMPI>();
}

bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD"}) {
    if (std::getenv(var) != nullptr) return true;
  }
  return false;
}

} // namespace ddp::mpi
