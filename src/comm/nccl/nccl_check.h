// DDP_CHECK_NCCL and DDP_CHECK_CUDA: turn a failed NCCL or CUDA runtime call into
// ddp::CommError carrying the library's own error string (and, for NCCL, its last-error
// text), the call, file:line and the rank. Calls on a communicator go through
// NcclComm::run instead, which also aborts the communicator before throwing, as
// horovod's NCCLContext::ErrorCheck does: a communicator in an unknown state would hang
// the next collective on every rank.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <string>

#include <ddp/error.h>

#include "comm/check_call.h"

#if !defined(NCCL_VERSION_CODE) || NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "libddp's NCCL backend needs NCCL 2.14 or newer (ncclGetLastError, ncclRemoteError); set NCCL_ROOT to one"
#endif

namespace ddp::nccl {

class NcclComm;

// NCCL's name for `result`, with a hint at the usual cause.
std::string describe_result(ncclResult_t result);

// Throws CommError for a failed `call`; aborts `comm` first when it is not null.
[[noreturn]] void throw_nccl_error(const char* call, ncclResult_t result, NcclComm* comm, const char* file, int line);
// The same for a call made without a communicator.
[[noreturn]] void throw_nccl_error(const char* call, ncclResult_t result, const char* file, int line);
[[noreturn]] void throw_cuda_error(const char* call, cudaError_t error, const char* file, int line);

} // namespace ddp::nccl

// For calls made without a communicator (ncclGetUniqueId).
#define DDP_CHECK_NCCL(call) DDP_CHECK_CALL(#call, (call), ncclSuccess, ::ddp::nccl::throw_nccl_error)

#define DDP_CHECK_CUDA(call) DDP_CHECK_CALL(#call, (call), cudaSuccess, ::ddp::nccl::throw_cuda_error)
