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
std::shared_ptr<ProcessGroup> create_c10d_nccl(const RendezvousConfig& config, std::optional<c10::Device> device) {
  int index = 0;
  if (device && device->is_cuda() && device->has_index()) {
    index = device->index();
  } else if (config.local_rank >= 0) {
    index = config.local_rank;
  } else if (c10::cuda::device_count() > 0) {
    index = config.rank % c10::cuda::device_count();
  }
  if (c10::cuda::device_count() <= index) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] the c10d-nccl backend would use cuda:{}, but {} CUDA device(s) are visible. Start at most "
        "that many ranks per machine, or check LOCAL_RANK and CUDA_VISIBLE_DEVICES.",
        config.rank, index, c10::cuda::device_count()));
  }
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(index));
  auto store = joined_store(config, "c10d-nccl");
  return creating("nccl", config, [&] {
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = config.timeout;
    auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, config.rank, config.world_size, options);
    return from_c10d(nccl, c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index)));
  });
}
#endif

} // namespace c10d_adapter
} // namespace ddp
