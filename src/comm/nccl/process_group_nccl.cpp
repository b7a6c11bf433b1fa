#include "comm/nccl/process_group_nccl.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <fmt/format.h>

#include <optional>
#include <thread>

#include <ddp/error.h>

#include "comm/argument_checks.h"
#include "comm/collective_description.h"
#include "comm/nccl/nccl_check.h"
#include "comm/nccl/nccl_comm.h"
#include "comm/nccl/nccl_types.h"
#include "comm/nccl/work_nccl.h"
#include "comm/ordered_sum.h"
#include "comm/watchdog.h"
#include "common/logging.h"
#include "common/timeouts.h"

namespace ddp::nccl {
namespace {

// "nccl allreduce of 4194304 x Float (16.00 MiB) on cuda:0".
std::string describe(const char* op, const at::Tensor& t) {
  return fmt::format("nccl {} on {}", detail::describe_collective(op, t), t.device().str());
}

} // namespace

// How often the watchdog polls the group's collectives and its asynchronous error.
constexpr std::chrono::milliseconds kWatchdogInterval{100};

ProcessGroupNCCL::ProcessGroupNCCL(int rank, int size, c10::Device device, const ncclUniqueId& id,
                                   std::chrono::milliseconds timeout)
    : rank_(rank),
      size_(size),
      device_(device),
      comm_stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())) {
  if (!device_.is_cuda() || !device_.has_index()) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] ProcessGroupNCCL needs a CUDA device with an index, got {}", rank_, device_.str()));
  }
  set_timeout(timeout);
  comm_ = std::make_shared<NcclComm>(size_, id, rank_, device_.index(), timeout);
  detail::Watchdog::Hooks hooks;
  // The hooks hold the communicator, not the group: the watchdog never outlives either.
  hooks.poll_error = [comm = comm_]() -> std::string {
    if (comm->aborted()) return fmt::format("its communicator was aborted: {}", comm->abort_reason());
    const ncclResult_t async = comm->async_error();
    if (async == ncclSuccess || async == ncclInProgress) return {};
    const std::string last = comm->last_error();
    return fmt::format("NCCL reports {}{}", describe_result(async), last.empty() ? "" : fmt::format(" (\"{}\")", last));
  };
  hooks.abort = [comm = comm_](const std::string& reason) { comm->abort(reason); };
  hooks.on_thread_start = [index = device_.index()] { c10::cuda::set_device(index); };
  watchdog_ = std::make_unique<detail::Watchdog>(fmt::format("NCCL process group on {}", device_.str()), rank_,
                                                  std::move(hooks), kWatchdogInterval);
  detail::log(detail::LogLevel::kInfo, rank_, "NCCL process group of {} ranks on {} (NCCL {}.{}.{})", size_,
              device_.str(), NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH);
}

ProcessGroupNCCL::~ProcessGroupNCCL() {
  // The drain below enforces the deadline itself; the watchdog's thread stops first.
  watchdog_.reset();
  if (comm_->aborted()) return;
  // Drain the communication stream, watching for a dead peer, so that destroying the
  // communicator never waits forever.
  const auto deadline = detail::deadline_after(timeout());
  std::optional<c10::cuda::CUDAGuard> guard;
  try {
    guard.emplace(device_);
  } catch (const std::exception& e) {
    comm_->abort(fmt::format("[ddp rank {}] the NCCL process group on {} was destroyed after a CUDA error: {}", rank_,
                             device_.str(), e.what()));
    return;
  }
  for (;;) {
    const cudaError_t status = cudaStreamQuery(comm_stream_.stream());
    if (status == cudaSuccess) break;
    (void)cudaGetLastError();
    const ncclResult_t async = comm_->async_error();
    const bool failed = status != cudaErrorNotReady || (async != ncclSuccess && async != ncclInProgress);
    if (failed || std::chrono::steady_clock::now() >= deadline) {
      comm_->abort(fmt::format("[ddp rank {}] the NCCL process group on {} was destroyed while {} ({})", rank_,
                               device_.str(),
                               failed ? "its communication stream had failed"
                                      : "collectives were still queued after the timeout",
                               failed ? (status != cudaErrorNotReady ? cudaGetErrorString(status)
                                                                     : ncclGetErrorString(async))
                                      : "another rank stopped issuing them"));
      break;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

void ProcessGroupNCCL::check_usable(const char* op) const {
  if (comm_->aborted() || watchdog_->failed()) {
    throw CommError(fmt::format(
        "[ddp rank {}] {}: this NCCL process group cannot be used: its communicator was aborted after an earlier "
        "failure: {}. Create a new process group (every rank must), or restart the job.",
        rank_, op, comm_->aborted() ? comm_->abort_reason() : watchdog_->failure()));
  }
}

void ProcessGroupNCCL::check_tensor(const at::Tensor& tensor, const char* op) const {
  detail::check_tensor(rank_, op, tensor, [&] {
    if (!tensor.device().is_cuda()) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] {}: the NCCL backend handles CUDA tensors, got a tensor on {}. Move the model to {} first "
          "(module->to(device)), or use the MPI backend for CPU tensors: ddp::init_process_group(\"mpi\").",
          rank_, op, tensor.device().str(), device_.str()));
    }
    if (tensor.device() != device_) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] {}: the tensor is on {} but this NCCL process group is bound to {} (one device per rank, "
          "chosen by LOCAL_RANK or the device passed to init_process_group). Move the tensor to {}.",
          rank_, op, tensor.device().str(), device_.str(), device_.str()));
    }
  });
}

template <typename Call>
std::shared_ptr<Work> ProcessGroupNCCL::launch(const char* op, std::string description,
                                               const std::vector<at::Tensor>& tensors, Call call) {
  check_usable(op);
  c10::cuda::CUDAGuard device_guard(device_);
  auto work = std::make_shared<WorkNCCL>(std::move(description), ++sequence_, rank_, device_, comm_);
  work->mark_started();

  // 1. The communication stream waits for what the caller's stream has queued so far.
  at::cuda::CUDAEvent ready;
  ready.record(c10::cuda::getCurrentCUDAStream(device_.index()));
  ready.block(comm_stream_);
  // 2. The caching allocator must not hand these blocks out again until the
  //    communication stream is done with them, even if the caller frees them first.
  for (const auto& t : tensors) {
    c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), comm_stream_);
  }
  // 3. The collective, then its completion event; its deadline starts now.
  call(*comm_, comm_stream_);
  work->record_end(comm_stream_);
  watchdog_->track(work, timeout());
  return work;
}

std::shared_ptr<Work> ProcessGroupNCCL::allreduce(at::Tensor tensor) {
  check_tensor(tensor, "allreduce");
  const ncclDataType_t type = datatype_for(tensor.scalar_type(), "allreduce", rank_);
  // A "sum" of booleans is a logical or, as in PyTorch.
  const ncclRedOp_t op = tensor.scalar_type() == at::kBool ? ncclMax : ncclSum;
  std::lock_guard<std::mutex> lock(mutex_);
  return launch("allreduce", describe("allreduce", tensor), {tensor},
                [&](NcclComm& comm, const c10::cuda::CUDAStream& stream) {
                  void* data = tensor.data_ptr();
                  comm.run("ncclAllReduce", timeout(), [&](ncclComm_t c) {
                    return ncclAllReduce(data, data, static_cast<size_t>(tensor.numel()), type, op, c,
                                         stream.stream());
                  });
                });
}

std::shared_ptr<Work> ProcessGroupNCCL::broadcast(at::Tensor tensor, int root) {
  check_tensor(tensor, "broadcast");
  detail::check_root(rank_, size_, root);
  const ncclDataType_t type = datatype_for(tensor.scalar_type(), "broadcast", rank_);
  std::lock_guard<std::mutex> lock(mutex_);
  return launch("broadcast", describe("broadcast", tensor), {tensor},
                [&](NcclComm& comm, const c10::cuda::CUDAStream& stream) {
                  void* data = tensor.data_ptr();
                  comm.run("ncclBroadcast", timeout(), [&](ncclComm_t c) {
                    return ncclBroadcast(data, data, static_cast<size_t>(tensor.numel()), type, root, c,
                                         stream.stream());
                  });
                });
}

std::shared_ptr<Work> ProcessGroupNCCL::allgather(std::vector<at::Tensor> outputs, at::Tensor input) {
  detail::check_allgather(rank_, size_, outputs, input, [this](const at::Tensor& t) { check_tensor(t, "allgather"); });
  const ncclDataType_t type = datatype_for(input.scalar_type(), "allgather", rank_);
  std::vector<at::Tensor> used = outputs;
  used.push_back(input);
  std::lock_guard<std::mutex> lock(mutex_);
  return launch("allgather", describe("allgather", input), used,
                [&](NcclComm& comm, const c10::cuda::CUDAStream& stream) {
                  // NCCL gathers into one buffer; it is allocated on the communication
                  // stream, so the allocator orders its reuse on that stream by itself.
                  c10::cuda::CUDAStreamGuard stream_guard(stream);
                  at::Tensor flat = at::empty({static_cast<int64_t>(size_), input.numel()}, input.options());
                  comm.run("ncclAllGather", timeout(), [&](ncclComm_t c) {
                    return ncclAllGather(input.data_ptr(), flat.data_ptr(), static_cast<size_t>(input.numel()), type,
                                         c, stream.stream());
                  });
                  for (int r = 0; r < size_; ++r) {
                    outputs[static_cast<size_t>(r)].view({-1}).copy_(flat[r], /*non_blocking=*/true);
                  }
                });
}

std::shared_ptr<Work> ProcessGroupNCCL::allreduce_ordered(at::Tensor tensor, OrderedReduce how) {
  check_tensor(tensor, "allreduce_ordered");
  const detail::OrderedSum sum(tensor, size_, rank_, how);
  const ncclDataType_t type = datatype_for(how.wire, "allreduce_ordered", rank_);
  std::lock_guard<std::mutex> lock(mutex_);
  return launch("allreduce_ordered", describe("ordered allreduce", tensor), {tensor},
                [&](NcclComm& comm, const c10::cuda::CUDAStream& stream) {
                  // Every buffer and kernel on the communication stream, in order after the
                  // caller's work (launch's event), so nothing here waits on the host.
                  c10::cuda::CUDAStreamGuard stream_guard(stream);
                  // Fresh blocks from the caching allocator, on this stream: no scratch kept.
                  const at::Tensor packed = sum.pack(nullptr);
                  at::Tensor pieces = sum.pieces(nullptr);
                  const auto count = static_cast<size_t>(sum.chunk());
                  const size_t row_bytes = count * static_cast<size_t>(pieces.element_size());
                  comm.run("ncclSend/ncclRecv (ordered allreduce)", timeout(), [&](ncclComm_t c) {
                    ncclResult_t rc = ncclGroupStart();
                    if (rc != ncclSuccess) return rc;
                    const auto* send = static_cast<const char*>(packed.data_ptr());
                    auto* receive = static_cast<char*>(pieces.data_ptr());
                    for (int peer = 0; peer < size_ && (rc == ncclSuccess || rc == ncclInProgress); ++peer) {
                      const size_t offset = static_cast<size_t>(peer) * row_bytes;
                      rc = ncclSend(send + offset, count, type, peer, c, stream.stream());
                      if (rc == ncclSuccess || rc == ncclInProgress) {
                        rc = ncclRecv(receive + offset, count, type, peer, c, stream.stream());
                      }
                    }
                    const ncclResult_t end = ncclGroupEnd();
                    return rc == ncclSuccess || rc == ncclInProgress ? end : rc;
                  });
                  const at::Tensor mine = sum.add(pieces, nullptr);
                  at::Tensor gathered = sum.gathered(nullptr);
                  comm.run("ncclAllGather (ordered allreduce)", timeout(), [&](ncclComm_t c) {
                    return ncclAllGather(mine.data_ptr(), gathered.data_ptr(), count, type, c, stream.stream());
                  });
                  sum.unpack(gathered);
                });
}

void ProcessGroupNCCL::abort(const std::string& reason) {
  comm_->abort(reason);
}

void ProcessGroupNCCL::barrier() {
  // NCCL has no barrier: a one-element all-reduce that every rank must join, waited for
  // on the host.
  at::Tensor token;
  {
    c10::cuda::CUDAGuard guard(device_);
    token = at::zeros({1}, at::TensorOptions().dtype(at::kFloat).device(device_));
  }
  allreduce(token)->wait(timeout());
}

} // namespace ddp::nccl
