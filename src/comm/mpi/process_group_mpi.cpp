#include "comm/mpi/process_group_mpi.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "comm/argument_checks.h"
#include "comm/collective_description.h"
#include "comm/mpi/host_staging.h"
#include "comm/mpi/mpi_check.h"
#include "comm/mpi/mpi_runtime.h"
#include "comm/mpi/mpi_types.h"
#include "comm/mpi/request_wait.h"
#include "comm/mpi/ring_allreduce.h"
#include "comm/ordered_sum.h"
#include "common/logging.h"

namespace ddp::mpi {
namespace {

// MPI counts are int: larger tensors go in chunks.
constexpr int64_t kMaxCount = INT_MAX / 2;

// A rank's DDP_MPI_WAIT setting that it rejected (its own error says why).
constexpr int kInvalidWaitMode = -1;

const char* wait_mode_name(int mode) {
  switch (mode) {
    case static_cast<int>(WaitMode::kSpin): return "spin";
    case static_cast<int>(WaitMode::kSleep): return "sleep";
  }
  return "invalid";
}

// Empty when every rank chose the same valid wait mode; else the error all ranks raise.
std::string check_wait_modes(int rank, const std::vector<int>& modes, const std::string& own_error) {
  if (!own_error.empty()) return own_error;
  for (size_t r = 0; r < modes.size(); ++r) {
    if (modes[r] == kInvalidWaitMode) {
      return fmt::format("[ddp rank {}] creating the MPI process group: rank {} rejected its DDP_MPI_WAIT or "
                         "DDP_MPI_WAIT_SLEEP_US (its own error says which). Set a valid, identical DDP_MPI_WAIT on "
                         "every rank (mpirun -x DDP_MPI_WAIT=...).",
                         rank, r);
    }
  }
  if (std::all_of(modes.begin(), modes.end(), [&](int m) { return m == modes.front(); })) return {};
  std::string per_rank;
  for (size_t r = 0; r < modes.size(); ++r) {
    per_rank += fmt::format("{}rank {}: {}", r == 0 ? "" : ", ", r, wait_mode_name(modes[r]));
  }
  return fmt::format("[ddp rank {}] creating the MPI process group: the ranks chose different DDP_MPI_WAIT modes "
                     "({}), whose MPI calls do not match. Set the same DDP_MPI_WAIT on every rank (mpirun -x "
                     "DDP_MPI_WAIT=...), or unset it everywhere.",
                     rank, per_rank);
}

} // namespace

ProcessGroupMPI::ProcessGroupMPI() {
  auto& runtime = MpiRuntime::instance();
  rank_ = runtime.world_rank();
  size_ = runtime.world_size();
  // The wait mode decides which MPI calls a collective makes (blocking, nonblocking, or
  // the ring's point-to-point messages), and those of different modes never match: a
  // rank with another DDP_MPI_WAIT, or with a value it rejects, would leave its peers
  // waiting. So every rank's choice is gathered with the communicator's creation, and
  // every rank raises the same error when they are not all valid and equal.
  std::string own_error;
  try {
    wait_ = WaitPolicy::from_env(rank_);
  } catch (const InvalidArgumentError& e) {
    own_error = e.what();
  }
  const int own_mode = own_error.empty() ? static_cast<int>(wait_.mode) : kInvalidWaitMode;
  std::vector<int> modes(static_cast<size_t>(size_));
  comm_ = runtime.call([own_mode, &modes] {
    MPI_Comm comm = MPI_COMM_NULL;
    DDP_CHECK_MPI(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
    DDP_CHECK_MPI(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
    DDP_CHECK_MPI(MPI_Allgather(&own_mode, 1, MPI_INT, modes.data(), 1, MPI_INT, comm));
    return comm;
  });
  if (std::string error = check_wait_modes(rank_, modes, own_error); !error.empty()) {
    runtime.call([comm = comm_]() mutable { MPI_Comm_free(&comm); });
    throw InvalidArgumentError(error);
  }
  ring_ = std::make_shared<RingAllreduce>(comm_, rank_, size_);
  detail::log(detail::LogLevel::kDebug, rank_, "MPI waits: {}", wait_.describe());
}

ProcessGroupMPI::~ProcessGroupMPI() {
  // Queued behind this group's last collective, so nothing in flight uses it.
  MPI_Comm comm = comm_;
  MpiRuntime::instance().enqueue(std::make_shared<Work>("communicator free", 0, rank_),
                                 [comm]() mutable { MPI_Comm_free(&comm); });
}

void ProcessGroupMPI::check_tensor(const at::Tensor& tensor, const char* op) const {
  detail::check_tensor(rank_, op, tensor, [&] {
    if (!tensor.device().is_cpu() && !tensor.device().is_cuda()) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] {}: the MPI backend handles CPU tensors, and CUDA tensors through host copies; got a "
          "tensor on {}. Move it to the CPU or a CUDA device first.",
          rank_, op, tensor.device().str()));
    }
  });
}

std::shared_ptr<HostStaging> ProcessGroupMPI::stage(std::vector<at::Tensor> tensors, const std::vector<bool>& reads,
                                                    std::vector<bool> writes) const {
  if (!HostStaging::needed(tensors)) return nullptr;
  return std::make_shared<HostStaging>(std::move(tensors), reads, std::move(writes));
}

std::shared_ptr<Work> ProcessGroupMPI::make_work(std::string description) {
  return std::make_shared<Work>(std::move(description), ++sequence_, rank_);
}

std::shared_ptr<Work> ProcessGroupMPI::allreduce(at::Tensor tensor) {
  check_tensor(tensor, "allreduce");
  MPI_Datatype type = datatype_for(tensor.scalar_type());
  MPI_Op op = sum_op_for(tensor.scalar_type());
  auto work = make_work(detail::describe_collective("allreduce", tensor));
  MPI_Comm comm = comm_;
  auto staged = stage({tensor}, {true}, {true});
  MpiRuntime::instance().enqueue(work, [tensor, type, op, comm, staged, wait = wait_, ring = ring_] {
    if (staged) staged->wait_copied_in();
    const at::Tensor& buffer = staged ? staged->host(0) : tensor;
    auto* data = static_cast<char*>(buffer.data_ptr());
    const int64_t n = tensor.numel();
    const int64_t elem = tensor.element_size();
    if (wait.mode == WaitMode::kSleep && ring->suits(n, elem)) {
      ring->run(data, n, type, elem, op, wait);
    } else {
      for (int64_t offset = 0; offset < n; offset += kMaxCount) {
        const int count = static_cast<int>(std::min(kMaxCount, n - offset));
        DDP_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, data + offset * elem, count, type, op, comm));
      }
    }
    if (staged) staged->copy_out();
  });
  return work;
}

std::shared_ptr<Work> ProcessGroupMPI::broadcast(at::Tensor tensor, int root) {
  check_tensor(tensor, "broadcast");
  detail::check_root(rank_, size_, root);
  MPI_Datatype type = datatype_for(tensor.scalar_type());
  auto work = make_work(detail::describe_collective("broadcast", tensor));
  MPI_Comm comm = comm_;
  // Only the root's tensor is read; every rank's is written (the root's with itself).
  auto staged = stage({tensor}, {rank_ == root}, {rank_ != root});
  MpiRuntime::instance().enqueue(work, [tensor, type, root, comm, staged, wait = wait_] {
    if (staged) staged->wait_copied_in();
    const at::Tensor& buffer = staged ? staged->host(0) : tensor;
    auto* data = static_cast<char*>(buffer.data_ptr());
    const int64_t n = tensor.numel();
    const int64_t elem = tensor.element_size();
    for (int64_t offset = 0; offset < n; offset += kMaxCount) {
      const int count = static_cast<int>(std::min(kMaxCount, n - offset));
      if (wait.mode == WaitMode::kSpin) {
        DDP_CHECK_MPI(MPI_Bcast(data + offset * elem, count, type, root, comm));
      } else {
        MPI_Request request = MPI_REQUEST_NULL;
        DDP_CHECK_MPI(MPI_Ibcast(data + offset * elem, count, type, root, comm, &request));
        wait_request(request, wait);
      }
    }
    if (staged) staged->copy_out();
  });
  return work;
}

std::shared_ptr<Work> ProcessGroupMPI::allgather(std::vector<at::Tensor> outputs, at::Tensor input) {
  detail::check_allgather(rank_, size_, outputs, input, [this](const at::Tensor& t) { check_tensor(t, "allgather"); });
  if (input.numel() > kMaxCount) {
    throw InvalidArgumentError(fmt::format("[ddp rank {}] allgather: inputs above {} elements are not supported",
                                           rank_, kMaxCount));
  }
  MPI_Datatype type = datatype_for(input.scalar_type());
  auto work = make_work(detail::describe_collective("allgather", input));
  MPI_Comm comm = comm_;
  // tensors: the outputs, then the input (read, not written).
  std::vector<at::Tensor> tensors = outputs;
  tensors.push_back(input);
  std::vector<bool> reads(tensors.size(), false);
  reads.back() = true;
  std::vector<bool> writes(tensors.size(), true);
  writes.back() = false;
  auto staged = stage(tensors, reads, writes);
  MpiRuntime::instance().enqueue(work, [outputs = std::move(outputs), input, type, comm, staged, wait = wait_] {
    if (staged) staged->wait_copied_in();
    const at::Tensor& in = staged ? staged->host(outputs.size()) : input;
    // One contiguous receive buffer, then scattered into the outputs.
    at::Tensor flat = at::empty({static_cast<int64_t>(outputs.size()), in.numel()}, in.options());
    const int count = static_cast<int>(in.numel());
    if (wait.mode == WaitMode::kSpin) {
      DDP_CHECK_MPI(MPI_Allgather(in.data_ptr(), count, type, flat.data_ptr(), count, type, comm));
    } else {
      MPI_Request request = MPI_REQUEST_NULL;
      DDP_CHECK_MPI(MPI_Iallgather(in.data_ptr(), count, type, flat.data_ptr(), count, type, comm, &request));
      wait_request(request, wait);
    }
    for (size_t r = 0; r < outputs.size(); ++r) {
      const at::Tensor& out = staged ? staged->host(r) : outputs[r];
      out.view({-1}).copy_(flat[static_cast<int64_t>(r)]);
    }
    if (staged) staged->copy_out();
  });
  return work;
}

std::shared_ptr<Work> ProcessGroupMPI::allreduce_ordered(at::Tensor tensor, OrderedReduce how) {
  check_tensor(tensor, "allreduce_ordered");
  auto sum = std::make_shared<detail::OrderedSum>(tensor, size_, rank_, how);
  if (sum->chunk() > kMaxCount) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] allreduce_ordered: a chunk of {} elements (the tensor / {} ranks) is above the {} an MPI call "
        "takes; lower bucket_cap_mb or in_place_min_mb so that no bucket is this large",
        rank_, sum->chunk(), size_, kMaxCount));
  }
  MPI_Datatype type = datatype_for(how.wire);
  auto work = make_work(detail::describe_collective("ordered allreduce", tensor));
  MPI_Comm comm = comm_;
  auto staged = stage({tensor}, {true}, {true});
  MpiRuntime::instance().enqueue(work, [tensor, type, comm, staged, sum, rank = rank_, size = size_,
                                        scratch = ordered_scratch_, wait = wait_] {
    if (staged) staged->wait_copied_in();
    // The arithmetic runs on the host buffer the collective reads (OrderedSum of it).
    const detail::OrderedSum host_sum(staged ? staged->host(0) : tensor, size, rank, sum->how());
    const int count = static_cast<int>(host_sum.chunk());
    auto exchange = [&](const void* send, void* receive, bool all_to_all) {
      if (wait.mode == WaitMode::kSpin) {
        DDP_CHECK_MPI(all_to_all ? MPI_Alltoall(send, count, type, receive, count, type, comm)
                                 : MPI_Allgather(send, count, type, receive, count, type, comm));
        return;
      }
      MPI_Request request = MPI_REQUEST_NULL;
      DDP_CHECK_MPI(all_to_all ? MPI_Ialltoall(send, count, type, receive, count, type, comm, &request)
                               : MPI_Iallgather(send, count, type, receive, count, type, comm, &request));
      wait_request(request, wait);
    };
    // One exchange at a time runs on this thread: the group's scratch is free to reuse.
    const at::Tensor packed = host_sum.pack(scratch.get());
    at::Tensor pieces = host_sum.pieces(scratch.get());
    exchange(packed.data_ptr(), pieces.data_ptr(), true);
    const at::Tensor mine = host_sum.add(pieces, scratch.get());
    at::Tensor gathered = host_sum.gathered(scratch.get());
    exchange(mine.data_ptr(), gathered.data_ptr(), false);
    host_sum.unpack(gathered);
    if (staged) staged->copy_out();
  });
  return work;
}

void ProcessGroupMPI::barrier() {
  auto work = make_work("barrier");
  MPI_Comm comm = comm_;
  MpiRuntime::instance().enqueue(work, [comm, wait = wait_] {
    if (wait.mode == WaitMode::kSpin) {
      DDP_CHECK_MPI(MPI_Barrier(comm));
      return;
    }
    MPI_Request request = MPI_REQUEST_NULL;
    DDP_CHECK_MPI(MPI_Ibarrier(comm, &request));
    wait_request(request, wait);
  });
  work->wait(timeout());
}

} // namespace ddp::mpi
