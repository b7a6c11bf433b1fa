#include <ddp/init.h>

#include <fmt/format.h>

#include <cstdlib>
#include <map>
#include <mutex>

#include <ddp/config.h>
#include <ddp/error.h>

#include "comm/rendezvous.h"
#include "common/check.h"
#include "common/env.h"
#include "common/logging.h"
#if DDP_HAVE_MPI
#include "comm/mpi/factory.h"
#endif
#if DDP_HAVE_NCCL
#include "comm/nccl/factory.h"
#endif
#if DDP_HAVE_GLOO || DDP_HAVE_C10D_NCCL
#include "comm/c10d/factory.h"
#endif

namespace ddp {
namespace {

constexpr const char* kC10dNccl = "c10d-nccl";

std::string built_backends() {
  std::string out;
  auto add = [&](bool built, const char* name) {
    if (built) out += (out.empty() ? "" : ", ") + std::string(name);
  };
  add(DDP_HAVE_MPI, "mpi");
  add(DDP_HAVE_NCCL, "nccl");
  add(DDP_HAVE_GLOO, "gloo");
  add(DDP_HAVE_C10D_NCCL, kC10dNccl);
  return out.empty() ? "none" : out;
}

[[noreturn, maybe_unused]] void not_built(const std::string& backend) {
  std::string how;
  if (backend == "mpi") how = "install libopenmpi-dev and reconfigure with -DDDP_WITH_MPI=ON";
  if (backend == "nccl") how = "reconfigure with -DDDP_WITH_NCCL=ON on a machine with CUDA and NCCL";
  if (backend == "gloo") {
    how = "install the gloo headers (Debian: libgloo-dev; scripts/setup.sh does) and reconfigure with "
          "-DDDP_WITH_GLOO=ON against a LibTorch that ships torch/csrc/distributed/c10d";
  }
  if (backend == kC10dNccl) how = "reconfigure with -DDDP_WITH_C10D_NCCL=ON against a CUDA LibTorch";
  throw InvalidArgumentError(fmt::format(
      "ddp::init_process_group: the {} backend is not part of this build of libddp (built: {}). To get it, {} "
      "(docs/launch.md).",
      backend, built_backends(), how));
}

// The rendezvous configuration: the environment, with what `options` sets in its place.
RendezvousConfig config_for(const InitOptions& options) {
  if (options.rank() < -1 || options.world_size() == 0 || options.world_size() < -1) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank ?] ddp::InitOptions: rank = {}, world_size = {} is invalid: leave them at -1 to read the "
        "launcher's RANK and WORLD_SIZE, or give a rank from 0 to world_size - 1 and a world_size of at least 1.",
        options.rank(), options.world_size()));
  }
  auto overrides = std::make_shared<std::map<std::string, std::string>>();
  if (!options.init_method().empty()) (*overrides)["DDP_INIT_METHOD"] = options.init_method();
  if (options.rank() >= 0) (*overrides)["RANK"] = std::to_string(options.rank());
  if (options.world_size() >= 0) (*overrides)["WORLD_SIZE"] = std::to_string(options.world_size());
  RendezvousConfig config = RendezvousConfig::from_env([overrides](const char* name) -> const char* {
    const auto it = overrides->find(name);
    return it != overrides->end() ? it->second.c_str() : std::getenv(name);
  });
  config.group_name = options.group_name().empty() ? "default" : options.group_name();
  if (!detail::Env().timeout_override()) config.timeout = options.timeout();
  return config;
}

std::shared_ptr<ProcessGroup> create_mpi() {
#if DDP_HAVE_MPI
  check_mpi_launch();
  return mpi::create();
#else
  not_built("mpi");
#endif
}

std::shared_ptr<ProcessGroup> create_nccl(const RendezvousConfig& config, std::optional<c10::Device> device) {
#if DDP_HAVE_NCCL
  return nccl::create(config, device);
#else
  not_built("nccl");
#endif
}

std::shared_ptr<ProcessGroup> create_gloo(const RendezvousConfig& config) {
#if DDP_HAVE_GLOO
  return c10d_adapter::create_gloo(config);
#else
  not_built("gloo");
#endif
}

std::shared_ptr<ProcessGroup> create(const InitOptions& options) {
  const std::string& backend = options.backend();
  const auto& device = options.device();
  if (backend == "mpi") return create_mpi();
  if (backend == "nccl") return create_nccl(config_for(options), device);
  if (backend == "gloo") return create_gloo(config_for(options));
  if (backend == kC10dNccl) {
#if DDP_HAVE_C10D_NCCL
    return c10d_adapter::create_c10d_nccl(config_for(options), device);
#else
    not_built(kC10dNccl);
#endif
  }
  if (backend == "auto") {
    if (device && device->is_cuda()) {
      if (!DDP_HAVE_NCCL && DDP_HAVE_C10D_NCCL) return create(InitOptions(options).backend(kC10dNccl));
      return create_nccl(config_for(options), device);
    }
    const detail::Env env;
    if (DDP_HAVE_MPI && env.launched_by_mpi()) return create_mpi();
    // torchrun, Slurm without PMI, or InitOptions naming the ranks: several processes
    // that no MPI launcher started, which gloo serves without one.
    const RendezvousConfig config = config_for(options);
    if (DDP_HAVE_GLOO && (config.method != RendezvousConfig::Method::kSingle || !DDP_HAVE_MPI)) {
      return create_gloo(config);
    }
    return create_mpi();
  }
  throw InvalidArgumentError(fmt::format(
      "ddp::init_process_group: unknown backend \"{}\"; use \"mpi\", \"nccl\", \"gloo\", \"{}\" or \"auto\" (this "
      "build has: {}; docs/launch.md says which to use where)",
      backend, kC10dNccl, built_backends()));
}

struct DefaultGroup {
  std::mutex mutex;
  std::shared_ptr<ProcessGroup> group;
};

DefaultGroup& default_group() {
  static DefaultGroup instance;
  return instance;
}

std::shared_ptr<ProcessGroup> current_default(const char* caller) {
  DefaultGroup& slot = default_group();
  std::lock_guard<std::mutex> lock(slot.mutex);
  if (!slot.group) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank ?] ddp::{}: there is no default process group. Call ddp::init_process_group() first (or again "
        "after destroy_process_group()).",
        caller));
  }
  return slot.group;
}

} // namespace

std::shared_ptr<ProcessGroup> init_process_group(const InitOptions& options) {
  auto group = create(options);
  detail::set_world_rank(group->rank());
  // A bad DDP_LOG_LEVEL / DDP_DEBUG fails here, once the rank is known for the message.
  detail::reload_log_settings(group->rank());
  group->set_timeout(options.timeout());
  if (auto timeout = detail::Env(group->rank()).timeout_override()) group->set_timeout(*timeout);
  {
    DefaultGroup& slot = default_group();
    std::lock_guard<std::mutex> lock(slot.mutex);
    slot.group = group;
  }
  return group;
}

std::shared_ptr<ProcessGroup> init_process_group(const std::string& backend, std::optional<c10::Device> device) {
  return init_process_group(InitOptions().backend(backend).device(device));
}

int get_rank() { return current_default("get_rank")->rank(); }

int get_world_size() { return current_default("get_world_size")->size(); }

int get_local_rank() {
  const detail::Env env;
  if (const auto local = env.local_rank()) return local->value;
  {
    DefaultGroup& slot = default_group();
    std::lock_guard<std::mutex> lock(slot.mutex);
    if (slot.group && slot.group->size() == 1) return 0;
  }
  const auto size = env.world_size();
  if (!size || size->value == 1) return 0;
  throw InvalidArgumentError(fmt::format(
      "{}ddp::get_local_rank: {}={} says this job has several ranks, but no launcher said which of them run on this "
      "node (LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID or SLURM_LOCALID). Launch with torchrun, "
      "mpirun or srun, or set LOCAL_RANK.",
      env.prefix(), size->variable, size->value));
}

void destroy_process_group() {
  DefaultGroup& slot = default_group();
  std::lock_guard<std::mutex> lock(slot.mutex);
  slot.group.reset();
}

} // namespace ddp
