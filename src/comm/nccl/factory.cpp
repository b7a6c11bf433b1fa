#include "comm/nccl/factory.h"

#include <c10/cuda/CUDAFunctions.h>
#include <fmt/format.h>

#include <atomic>
#include <cstring>

#include <ddp/error.h>

#include "comm/nccl/nccl_check.h"
#include "comm/nccl/process_group_nccl.h"
#include "comm/rendezvous.h"
#include "common/check.h"
#include "common/env.h"
#include "common/logging.h"

namespace ddp::nccl {
namespace {

// Numbers this process's NCCL groups, so that each rendezvous has a key every rank
// agrees on as long as they create their groups in the same order.
std::atomic<int> g_groups_created{0};

c10::Device choose_device(std::optional<c10::Device> requested, const RendezvousConfig& config, int rank) {
  const int count = c10::cuda::device_count();
  if (count == 0) {
    const auto visible = detail::Env(rank).cuda_visible_devices();
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] the NCCL backend needs a CUDA device, but none is visible (CUDA_VISIBLE_DEVICES={}). Check "
        "the driver (nvidia-smi), or train on the CPU with the MPI backend: ddp::init_process_group(\"mpi\").",
        rank, visible ? fmt::format("\"{}\"", *visible) : std::string("unset")));
  }
  if (requested && !requested->is_cuda()) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] the NCCL backend was given device {}; it needs a CUDA device (e.g. torch::Device(torch::kCUDA, "
        "local_rank)). Use the MPI backend for CPU tensors.",
        rank, requested->str()));
  }
  int index = 0;
  std::string why;
  if (requested && requested->has_index()) {
    index = requested->index();
    why = "the device given to init_process_group";
  } else if (config.local_rank >= 0) {
    index = config.local_rank;
    why = fmt::format("LOCAL_RANK={}", config.local_rank);
  } else {
    index = rank % count;
    why = fmt::format("rank {} modulo {} visible devices (no LOCAL_RANK set)", rank, count);
  }
  if (index >= count) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] the NCCL backend would use cuda:{} ({}), but only {} CUDA device(s) are visible. Start at "
        "most {} rank(s) per machine, or check LOCAL_RANK and CUDA_VISIBLE_DEVICES.",
        rank, index, why, count, count));
  }
  detail::log(detail::LogLevel::kInfo, rank, "NCCL backend binds cuda:{} ({})", index, why);
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

} // namespace

std::shared_ptr<ProcessGroup> create(const RendezvousConfig& config, std::optional<c10::Device> device) {
  auto rendezvous = make_rendezvous(config);
  const int rank = rendezvous->rank();
  const int size = rendezvous->world_size();
  detail::set_world_rank(rank);

  const c10::Device bound = choose_device(device, config, rank);
  c10::cuda::set_device(bound.index());

  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  std::vector<char> bytes;
  if (rank == 0) {
    DDP_CHECK_NCCL(ncclGetUniqueId(&id));
    bytes.assign(reinterpret_cast<const char*>(&id), reinterpret_cast<const char*>(&id) + sizeof(id));
  }
  const std::string key = fmt::format("nccl/{}", ++g_groups_created);
  bytes = rendezvous->exchange(key, bytes);
  if (bytes.size() != sizeof(id)) {
    throw CommError(fmt::format(
        "[ddp rank {}] NCCL rendezvous through {}: received {} bytes from rank 0, expected an ncclUniqueId of {} "
        "bytes. Are all ranks running the same libddp and NCCL?",
        rank, config.describe(), bytes.size(), sizeof(id)));
  }
  std::memcpy(&id, bytes.data(), sizeof(id));
  detail::log(detail::LogLevel::kInfo, rank, "NCCL rendezvous \"{}\" done through {}", key, config.describe());
  // DDP_TIMEOUT_S (read with the rendezvous config) bounds the communicator's init too
  // (init_process_group applies it to the group again afterwards).
  const std::chrono::milliseconds timeout = config.timeout;
  return std::make_shared<ProcessGroupNCCL>(rank, size, bound, id, timeout);
}

} // namespace ddp::nccl
