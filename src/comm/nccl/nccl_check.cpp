#include "comm/nccl/nccl_check.h"

#include <fmt/format.h>

#include "comm/nccl/nccl_comm.h"
#include "common/check.h"

namespace ddp::nccl {

std::string describe_result(ncclResult_t result) {
  const char* hint = "";
  switch (result) {
    case ncclUnhandledCudaError:
      hint = " (a CUDA call inside NCCL failed: look for an earlier CUDA error, e.g. out of memory or an illegal "
             "address)";
      break;
    case ncclSystemError:
      hint = " (a system call failed: network, shared memory or /dev/shm too small; NCCL_DEBUG=WARN says which)";
      break;
    case ncclInternalError:
      hint = " (an internal NCCL error or a corrupted message)";
      break;
    case ncclInvalidArgument:
      hint = " (an invalid argument: a null pointer, a device mismatch, or an id from another job)";
      break;
    case ncclInvalidUsage:
      hint = " (invalid usage: ranks disagree on the collective, its size, dtype or root, or two ranks use the same "
             "GPU)";
      break;
    case ncclRemoteError:
      hint = " (another rank failed or exited)";
      break;
    default:
      break;
  }
  return fmt::format("{}{}", ncclGetErrorString(result), hint);
}

void throw_nccl_error(const char* call, ncclResult_t result, NcclComm* comm, const char* file, int line) {
  // NCCL's last-error text (one buffer for the process, so possibly about an earlier
  // failure); read before the abort.
  const char* global = comm == nullptr ? ncclGetLastError(nullptr) : nullptr;
  const std::string last = comm != nullptr ? comm->last_error() : std::string(global != nullptr ? global : "");
  std::string message = fmt::format("[ddp rank {}] NCCL call {} failed at {}:{}: {}.", detail::world_rank(), call,
                                    file, line, describe_result(result));
  if (!last.empty()) message += fmt::format(" NCCL says: \"{}\".", last);
  if (comm != nullptr) {
    comm->abort(message);
    message += " The NCCL communicator has been aborted so that no rank waits on it forever; this process group "
               "cannot be used again.";
  }
  message += " Run with NCCL_DEBUG=INFO for NCCL's own log.";
  throw CommError(message);
}

void throw_nccl_error(const char* call, ncclResult_t result, const char* file, int line) {
  throw_nccl_error(call, result, nullptr, file, line);
}

void throw_cuda_error(const char* call, cudaError_t error, const char* file, int line) {
  (void)cudaGetLastError();  // clear it, so the next unrelated check does not see it again
  throw CommError(fmt::format("[ddp rank {}] CUDA call {} failed at {}:{}: {} ({})", detail::world_rank(), call, file,
                              line, cudaGetErrorString(error), cudaGetErrorName(error)));
}

} // namespace ddp::nccl
