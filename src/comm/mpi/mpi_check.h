// DDP_CHECK_MPI: turns a failed MPI call into ddp::CommError with MPI's own error
// string and the rank. Our communicators use MPI_ERRORS_RETURN so that errors reach
// this check instead of aborting the job.
#pragma once

#include <mpi.h>

#include <fmt/format.h>

#include <string>

#include <ddp/error.h>

namespace ddp::mpi {

std::string error_string(int code);

[[noreturn]] void throw_mpi_error(const char* call, int code, const char* file, int line);

} // namespace ddp::mpi

#define DDP_CHECK_MPI(call)                                                \
  do {                                                                     \
    int ddp_mpi_rc_ = (call);                                              \
    if (ddp_mpi_rc_ != MPI_SUCCESS) {                                      \
      ::ddp::mpi::throw_mpi_error(#call, ddp_mpi_rc_, __FILE__, __LINE__); \
    }                                                                      \
  } while (0)
