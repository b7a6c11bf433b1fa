#include "comm/c10d/factory.h"

#include <fmt/format.h>

#include <ddp/c10d.h>
#include <ddp/error.h>

#include "comm/c10d/process_group_c10d.h"
#include "comm/store_factory.h"
#include "comm/store_rendezvous.h"
#include "common/env.h"
#include "common/logging.h"

#if DDP_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#if DDP_HAVE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace ddp {
namespace detail {

std::shared_ptr<ProcessGroup> from_c10d_process_group(const c10::intrusive_ptr<c10d::ProcessGroup>& group,
                                                      c10::Device device) {
  return std::make_shared<c10d_adapter::ProcessGroupC10d<c10d::ProcessGroup>>(group, device);
}

std::shared_ptr<ProcessGroup> from_c10d_backend(const c10::intrusive_ptr<c10d::Backend>& group, c10::Device device) {
  return std::make_shared<c10d_adapter::ProcessGroupC10d<c10d::Backend>>(group, device);
}

} // namespace detail

namespace c10d_adapter {
namespace {

// The store of `config`'s next group, once every rank has arrived at it: a rank that is
// missing is named here, after config.timeout, instead of inside c10d's own connect.
c10::intrusive_ptr<c10d::Store> joined_store(const RendezvousConfig& config, const std::string& backend) {
  StoreRendezvous rendezvous(make_store(config), config);
  rendezvous.exchange(backend + "/join", {});
  return rendezvous.store();
}

// c10d's exceptions while creating a group, as libddp's.
template <typename Create>
auto creating(const char* backend, const RendezvousConfig& config, Create&& create) {
  try {
    return create();
  } catch (const ddp::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw CommError(fmt::format("[ddp rank {}] creating the c10d {} process group of {} ranks through {} failed: {}",
                                config.rank, backend, config.world_size, config.describe(), e.what()));
  }
}

} // namespace

#if DDP_HAVE_GLOO
std::shared_ptr<ProcessGroup> create_gloo(const RendezvousConfig& config) {
  auto store = joined_store(config, "gloo");
  return creating("gloo", config, [&] {
    auto options = c10d::ProcessGroupGloo::Options::create(config.timeout);
    if (auto interface = detail::Env(config.rank).gloo_socket_ifname()) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(*interface));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, config.rank, config.world_size, options);
    detail::log(detail::LogLevel::kInfo, config.rank, "gloo process group of {} ranks through {}", config.world_size,
                config.describe());
    return from_c10d(gloo);
  });
}
#endif

#if DDP_HAVE_C10D_NCCL
namespace {

// The rank's GPU, chosen as libddp's own NCCL backend chooses it (src/comm/nccl/factory.cpp):
// the device given, else LOCAL_RANK, else rank modulo the visible devices. Checked here,
// before ProcessGroupNCCL exists: without a device PyTorch's NCCL group would fail later,
// inside its first collective, with a message that does not say why.
c10::DeviceIndex c10d_nccl_device(const RendezvousConfig& config, std::optional<c10::Device> device) {
  const int count = c10::cuda::device_count();
  if (count == 0) {
    const auto visible = detail::Env(config.rank).cuda_visible_devices();
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] the c10d-nccl backend (PyTorch's ProcessGroupNCCL) needs a CUDA device, but none is visible "
        "(CUDA_VISIBLE_DEVICES={}). Check the driver (nvidia-smi), or train on the CPU with the gloo or mpi "
        "backend.",
        config.rank, visible ? fmt::format("\"{}\"", *visible) : std::string("unset")));
  }
  if (device && !device->is_cuda()) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] the c10d-nccl backend was given device {}; it needs a CUDA device (e.g. "
        "torch::Device(torch::kCUDA, local_rank)). Use the gloo or mpi backend for CPU tensors.",
        config.rank, device->str()));
  }
  int index = 0;
  if (device && device->has_index()) {
    index = device->index();
  } else if (config.local_rank >= 0) {
    index = config.local_rank;
  } else {
    index = config.rank % count;
  }
  if (index >= count) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] the c10d-nccl backend would use cuda:{}, but only {} CUDA device(s) are visible. Start at "
        "most that many ranks per machine, or check LOCAL_RANK and CUDA_VISIBLE_DEVICES.",
        config.rank, index, count));
  }
  return static_cast<c10::DeviceIndex>(index);
}

} // namespace

std::shared_ptr<ProcessGroup> create_c10d_nccl(const RendezvousConfig& config, std::optional<c10::Device> device) {
  const c10::DeviceIndex index = c10d_nccl_device(config, device);
  c10::cuda::set_device(index);
  auto store = joined_store(config, "c10d-nccl");
  return creating("nccl", config, [&] {
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = config.timeout;
    auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, config.rank, config.world_size, options);
    detail::log(detail::LogLevel::kInfo, config.rank, "c10d-nccl process group of {} ranks on cuda:{} through {}",
                config.world_size, index, config.describe());
    return from_c10d(nccl, c10::Device(c10::kCUDA, index));
  });
}
#endif

} // namespace c10d_adapter
} // namespace ddp
