#include "comm/mpi/factory.h"

#include "comm/mpi/process_group_mpi.h"

namespace ddp::mpi {

std::shared_ptr<ProcessGroup> create() {
  return std::make_shared<ProcessGroupMPI>();
}

} // namespace ddp::mpi
