#include "comm/mpi/mpi_check.h"

#include "common/check.h"

namespace ddp::mpi {

std::string error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    return fmt::format("MPI error code {}", code);
  }
  return std::string(text, static_cast<size_t>(length));
}

void throw_mpi_error(const char* call, int code, const char* file, int line) {
  throw CommError(fmt::format("[ddp rank {}] MPI call {} failed at {}:{}: {}", detail::world_rank(), call, file, line,
                              error_string(code)));
}

} // namespace ddp::mpi
