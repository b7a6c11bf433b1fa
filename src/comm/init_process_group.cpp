#include <ddp/init.h>

#include <fmt/format.h>

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

namespace ddp {
namespace {

std::string built_backends() {
  std::string out;
  if (DDP_HAVE_MPI) out += "mpi";
  if (DDP_HAVE_NCCL) out += out.empty() ? "nccl" : ", nccl";
  return out.empty() ? "none" : out;
}

[[noreturn, maybe_unused]] void not_built(const std::string& backend) {
  throw InvalidArgumentError(fmt::format(
      "ddp::init_process_group: the {} backend is not part of this build of libddp (built: {}). Reconfigure with "
      "-DDDP_WITH_{}=ON and make sure its library is found.",
      backend, built_backends(), backend == "mpi" ? "MPI" : "NCCL"));
}

std::shared_ptr<ProcessGroup> create(const std::string& backend, std::optional<c10::Device> device) {
  if (backend == "mpi") {
#if DDP_HAVE_MPI
    check_mpi_launch();
    return mpi::create();
#else
    not_built(backend);
#endif
  }
  if (backend == "nccl") {
#if DDP_HAVE_NCCL
    return nccl::create(device);
#else
    not_built(backend);
#endif
  }
  if (backend == "auto") {
    if (device && device->is_cuda()) {
#if DDP_HAVE_NCCL
      return nccl::create(device);
#else
      not_built("nccl");
#endif
    }
#if DDP_HAVE_MPI
    check_mpi_launch();
    return mpi::create();
#else
    not_built("mpi");
#endif
  }
  throw InvalidArgumentError(fmt::format(
      "ddp::init_process_group: unknown backend \"{}\"; use \"mpi\", \"nccl\" or \"auto\" (this build has: {})",
      backend, built_backends()));
}

} // namespace

std::shared_ptr<ProcessGroup> init_process_group(const std::string& backend, std::optional<c10::Device> device) {
  auto group = create(backend, device);
  detail::set_world_rank(group->rank());
  // A bad DDP_LOG_LEVEL / DDP_DEBUG fails here, once the rank is known for the message.
  detail::reload_log_settings(group->rank());
  if (auto timeout = detail::Env(group->rank()).timeout_override()) group->set_timeout(*timeout);
  return group;
}

} // namespace ddp
