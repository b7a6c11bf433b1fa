// DDP_CHECK_MPI: turns a failed MPI call into ddp::CommError with MPI's own error
// string and the rank. Our communicators use MPI_ERRORS_RETURN so that errors reach
// this check instead of aborting the job.
#pragma once

#include <mpi.h>

#include <fmt/format.h>

#include <string>

#include <ddp/error.h>

#include "comm/check_call.h"

namespace ddp::mpi {

std::string error_string(int code);

[[noreturn]] void throw_mpi_error(const char* call, int code, const char* file, int line);

} // namespace ddp::mpi

#define DDP_CHECK_MPI(call) DDP_CHECK_CALL(#call, (call), MPI_SUCCESS, ::ddp::mpi::throw_mpi_error)
