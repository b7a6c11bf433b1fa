#include "comm/rendezvous.h"

#include "common/timeouts.h"

#include <fmt/format.h>

#include <cerrno>
#include <climits>
#include <cstdlib>

#include <ddp/config.h>
#include <ddp/error.h>

#include "comm/file_rendezvous.h"
#include "comm/process_group_rendezvous.h"
#include "comm/tcp_rendezvous.h"
#if DDP_HAVE_MPI
#include "comm/mpi/factory.h"
#endif

namespace ddp {
namespace {

// A world of one: there is nobody to tell.
class SingleProcessRendezvous final : public Rendezvous {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::vector<char> exchange(const std::string&, const std::vector<char>& bytes) override { return bytes; }
};

const char* lookup(const RendezvousConfig::EnvLookup& getenv, const char* name) {
  const char* value = getenv ? getenv(name) : std::getenv(name);
  return (value != nullptr && *value != '\0') ? value : nullptr;
}

// The first of `names` that is set, and which one it was.
std::pair<const char*, const char*> first_set(const RendezvousConfig::EnvLookup& getenv,
                                              std::initializer_list<const char*> names) {
  for (const char* name : names) {
    if (const char* value = lookup(getenv, name)) return {name, value};
  }
  return {nullptr, nullptr};
}

long parse_int(const char* name, const char* value, long min, long max, const char* what) {
  errno = 0;
  char* end = nullptr;
  const long parsed = std::strtol(value, &end, 10);
  if (errno != 0 || end == value || *end != '\0' || parsed < min || parsed > max) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank ?] rendezvous: {}=\"{}\" is not valid: it must be an integer from {} to {} ({})", name, value,
        min, max, what));
  }
  return parsed;
}

[[noreturn]] void missing(const char* name, const std::string& why) {
  throw InvalidArgumentError(fmt::format(
      "[ddp rank ?] rendezvous: {} is not set, but {}. Launch with torchrun (which sets RANK, WORLD_SIZE, "
      "LOCAL_RANK, MASTER_ADDR and MASTER_PORT), with mpirun, or set them yourself; DDP_INIT_METHOD=file:///path "
      "uses a shared file instead of MASTER_ADDR/MASTER_PORT.",
      name, why));
}

// The variables an MPI launcher sets (the list of mpi::launched_by_mpi(), read through
// `getenv` so tests can decide). Only meaningful when MPI was built.
bool launched_by_mpi(const RendezvousConfig::EnvLookup& getenv) {
  if (!DDP_HAVE_MPI) return false;
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD"}) {
    if (lookup(getenv, var) != nullptr) return true;
  }
  return false;
}

// RANK and WORLD_SIZE, or the MPI launcher's equivalents, into `config`.
void read_rank_and_size(const RendezvousConfig::EnvLookup& getenv, RendezvousConfig& config, const std::string& why) {
  auto [size_name, size_value] = first_set(getenv, {"WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"});
  if (size_name == nullptr) missing("WORLD_SIZE", why);
  config.world_size = static_cast<int>(parse_int(size_name, size_value, 1, INT_MAX, "the number of processes"));
  auto [rank_name, rank_value] = first_set(getenv, {"RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"});
  if (rank_name == nullptr) missing("RANK", why);
  config.rank = static_cast<int>(parse_int(rank_name, rank_value, 0, config.world_size - 1,
                                           fmt::format("this process's rank, below {}={}", size_name,
                                                       config.world_size).c_str()));
}

void read_master(const RendezvousConfig::EnvLookup& getenv, RendezvousConfig& config,
                 const std::string& why = "the TCP rendezvous needs rank 0's address") {
  const char* addr = lookup(getenv, "MASTER_ADDR");
  if (addr == nullptr) missing("MASTER_ADDR", why);
  const char* port = lookup(getenv, "MASTER_PORT");
  if (port == nullptr) missing("MASTER_PORT", why);
  config.host = addr;
  config.port = static_cast<int>(parse_int("MASTER_PORT", port, 1, 65535, "a TCP port rank 0 can listen on"));
}

// "host:port" of tcp://host:port (IPv6 as [addr]:port).
void parse_tcp_url(const std::string& url, const std::string& rest, RendezvousConfig& config) {
  std::string host;
  std::string port;
  if (!rest.empty() && rest.front() == '[') {
    const auto close = rest.find(']');
    if (close != std::string::npos && close + 1 < rest.size() && rest[close + 1] == ':') {
      host = rest.substr(1, close - 1);
      port = rest.substr(close + 2);
    }
  } else if (const auto colon = rest.rfind(':'); colon != std::string::npos) {
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (!port.empty() && port.back() == '/') port.pop_back();
  if (host.empty() || port.empty()) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank ?] rendezvous: DDP_INIT_METHOD=\"{}\" is not valid: write tcp://HOST:PORT, e.g. "
        "tcp://10.0.0.1:29500",
        url));
  }
  config.host = host;
  config.port = static_cast<int>(parse_int("the port of DDP_INIT_METHOD", port.c_str(), 1, 65535, "a TCP port"));
}

} // namespace

RendezvousConfig RendezvousConfig::from_env(const EnvLookup& getenv) {
  RendezvousConfig config;
  if (const char* timeout = lookup(getenv, "DDP_TIMEOUT_S"); timeout != nullptr && *timeout != '\0') {
    config.timeout = detail::parse_seconds("DDP_TIMEOUT_S", timeout, -1);
  }
  if (auto [name, value] = first_set(getenv, {"LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                                              "SLURM_LOCALID"});
      name != nullptr) {
    config.local_rank = static_cast<int>(parse_int(name, value, 0, INT_MAX, "the rank within this node"));
  }

  const char* init = lookup(getenv, "DDP_INIT_METHOD");
  const std::string method = init != nullptr ? init : "";
  if (method.rfind("file://", 0) == 0) {
    config.method = Method::kFile;
    config.path = method.substr(7);
    if (config.path.empty() || config.path.front() != '/') {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank ?] rendezvous: DDP_INIT_METHOD=\"{}\" is not valid: write file:// followed by an absolute path "
          "on a file system every rank sees, e.g. file:///shared/ddp_rendezvous",
          method));
    }
    read_rank_and_size(getenv, config, "DDP_INIT_METHOD=file://... needs every rank's rank and the world size");
  } else if (method.rfind("tcp://", 0) == 0) {
    config.method = Method::kTcp;
    parse_tcp_url(method, method.substr(6), config);
    read_rank_and_size(getenv, config, "DDP_INIT_METHOD=tcp://... needs every rank's rank and the world size");
  } else if (method == "env://" || method == "env") {
    config.method = Method::kTcp;
    read_rank_and_size(getenv, config, "DDP_INIT_METHOD=env:// reads RANK and WORLD_SIZE");
    read_master(getenv, config);
  } else if (method == "mpi" || method == "mpi://") {
    config.method = Method::kMpi;
  } else if (!method.empty()) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank ?] rendezvous: DDP_INIT_METHOD=\"{}\" is not known: use file:///path, tcp://host:port, env:// "
        "or mpi (or leave it unset to use torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, or mpirun)",
        method));
  } else if (launched_by_mpi(getenv) && lookup(getenv, "MASTER_ADDR") == nullptr) {
    config.method = Method::kMpi;
  } else if (lookup(getenv, "RANK") || lookup(getenv, "WORLD_SIZE") || lookup(getenv, "MASTER_ADDR") ||
             lookup(getenv, "MASTER_PORT")) {
    config.method = Method::kTcp;
    read_rank_and_size(getenv, config, "torchrun-style launch (MASTER_ADDR/MASTER_PORT or RANK is set)");
    read_master(getenv, config);
  } else if (const char* tasks = lookup(getenv, "SLURM_NTASKS"); tasks != nullptr && std::string(tasks) != "1") {
    // srun without PMI: each task would otherwise be a world of its own, silently.
    config.method = Method::kTcp;
    const std::string why = fmt::format(
        "this is a Slurm job step of SLURM_NTASKS={} tasks started without an MPI launcher (srun without PMI), and "
        "its ranks must find rank 0 (docs/cluster.md, \"Slurm\": export MASTER_ADDR=$(scontrol show hostnames "
        "\"$SLURM_JOB_NODELIST\" | head -n 1) and MASTER_PORT, or use srun --mpi=pmix with the MPI backend)",
        tasks);
    read_rank_and_size(getenv, config, why);
    read_master(getenv, config, why);
  } else {
    config.method = Method::kSingle;
  }
  if (config.method != Method::kMpi && config.world_size == 1) {
    config.method = Method::kSingle;
  }
  return config;
}

std::string RendezvousConfig::describe() const {
  switch (method) {
    case Method::kSingle:
      return "a single process (no RANK/WORLD_SIZE/DDP_INIT_METHOD set)";
    case Method::kTcp:
      return fmt::format("tcp://{}:{} (MASTER_ADDR/MASTER_PORT or DDP_INIT_METHOD)", host, port);
    case Method::kFile:
      return fmt::format("file://{} (DDP_INIT_METHOD)", path);
    case Method::kMpi:
      return "MPI (launched by mpirun)";
  }
  return "?";
}

std::unique_ptr<Rendezvous> make_rendezvous(const RendezvousConfig& config) {
  switch (config.method) {
    case RendezvousConfig::Method::kSingle:
      return std::make_unique<SingleProcessRendezvous>();
    case RendezvousConfig::Method::kTcp:
      return std::make_unique<TcpRendezvous>(config);
    case RendezvousConfig::Method::kFile:
      return std::make_unique<FileRendezvous>(config);
    case RendezvousConfig::Method::kMpi:
#if DDP_HAVE_MPI
    {
      auto group = mpi::create();
      group->set_timeout(config.timeout);
      return std::make_unique<ProcessGroupRendezvous>(std::move(group));
    }
#else
      throw InvalidArgumentError(
          "[ddp rank ?] rendezvous over MPI was asked for (DDP_INIT_METHOD=mpi), but this build of libddp has no MPI "
          "backend. Reconfigure with -DDDP_WITH_MPI=ON, or rendezvous over TCP (MASTER_ADDR/MASTER_PORT) or a file "
          "(DDP_INIT_METHOD=file:///path).");
#endif
  }
  throw InvalidArgumentError("[ddp rank ?] rendezvous: unknown method");
}

void check_mpi_launch(const RendezvousConfig::EnvLookup& getenv) {
  if (launched_by_mpi(getenv)) return;
  for (const char* var : {"WORLD_SIZE", "SLURM_NTASKS"}) {
    const char* value = lookup(getenv, var);
    if (value == nullptr || std::string(value) == "1") continue;
    throw InvalidArgumentError(fmt::format(
        "[ddp rank ?] init_process_group: {}=\"{}\" says this job has several processes, but this one was not "
        "started by an MPI launcher, so the MPI backend would see a world of 1 and train alone. The MPI backend "
        "(CPU tensors) needs its ranks started by mpirun -np N (or srun --mpi=pmix); a torchrun-style launch "
        "(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) works with the nccl backend. Unset {} to run one process.",
        var, value, var));
  }
}

} // namespace ddp
