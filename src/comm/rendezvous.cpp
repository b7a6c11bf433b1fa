#include "comm/rendezvous.h"

#include "common/env.h"

#include <fmt/format.h>

#include <cctype>
#include <climits>

#include <ddp/config.h>
#include <ddp/error.h>

#include "comm/process_group_rendezvous.h"
#if DDP_HAVE_C10D
#include "comm/store_factory.h"
#include "comm/store_rendezvous.h"
#endif
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

[[noreturn]] void missing(const char* name, const std::string& why) {
  throw InvalidArgumentError(fmt::format(
      "[ddp rank ?] rendezvous: {} is not set, but {}. Launch with torchrun (which sets RANK, WORLD_SIZE, "
      "LOCAL_RANK, MASTER_ADDR and MASTER_PORT), with mpirun, or set them yourself; DDP_INIT_METHOD=file:///path "
      "uses a shared file instead of MASTER_ADDR/MASTER_PORT.",
      name, why));
}

// The store's port under Slurm when MASTER_PORT is unset: kSlurmPortBase + SLURM_JOB_ID
// modulo kSlurmPortRange (below the usual ephemeral range, 32768 and up).
constexpr int kSlurmPortBase = 20000;
constexpr int kSlurmPortRange = 10000;

// Started by an MPI launcher, and MPI was built: only then can MPI be the rendezvous.
bool mpi_launch(const detail::Env& env) { return DDP_HAVE_MPI && env.launched_by_mpi(); }

// RANK and WORLD_SIZE, or the MPI launcher's equivalents, into `config`.
void read_rank_and_size(const detail::Env& env, RendezvousConfig& config, const std::string& why) {
  const auto size = env.world_size();
  if (!size) missing("WORLD_SIZE", why);
  config.world_size = size->value;
  const auto rank = env.rank_in(*size);
  if (!rank) missing("RANK", why);
  config.rank = rank->value;
}

void read_master(const detail::Env& env, RendezvousConfig& config,
                 const std::string& why = "the TCP rendezvous needs rank 0's address") {
  auto addr = env.master_addr();
  if (!addr) missing("MASTER_ADDR", why);
  const auto port = env.master_port();
  if (!port) missing("MASTER_PORT", why);
  config.host = std::move(*addr);
  config.port = *port;
  config.address_from = "MASTER_ADDR/MASTER_PORT";
}

// "host:port" of tcp://host:port (IPv6 as [addr]:port).
void parse_tcp_url(const detail::Env& env, const std::string& url, const std::string& rest, RendezvousConfig& config) {
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
  const bool digits = !port.empty() && port.size() <= 5 &&
                      port.find_first_not_of("0123456789") == std::string::npos;
  const long number = digits ? std::stol(port) : 0;
  if (host.empty() || number < 1 || number > 65535) {
    env.reject("DDP_INIT_METHOD", url, "a valid rendezvous address",
               "tcp://HOST:PORT with a port from 1 to 65535, e.g. tcp://10.0.0.1:29500");
  }
  config.host = host;
  config.port = static_cast<int>(number);
  config.address_from = "DDP_INIT_METHOD";
}

} // namespace

RendezvousConfig RendezvousConfig::from_env(const EnvLookup& getenv) {
  const detail::Env env(getenv);
  RendezvousConfig config;
  config.timeout = env.timeout();
  config.agent_store = env.use_agent_store();
  config.restart_count = env.restart_count();
  if (const auto local = env.local_rank()) config.local_rank = local->value;

  const std::string method = env.init_method().value_or("");
  // The scheme is a word (any case); what follows file:// is a path (as written).
  std::string scheme = method.substr(0, method.find("://") == std::string::npos ? method.size() : method.find("://"));
  for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const bool has_slashes = method.find("://") != std::string::npos;
  const std::string rest = has_slashes ? method.substr(method.find("://") + 3) : std::string();
  if (has_slashes && scheme == "file") {
    config.method = Method::kFile;
    config.path = rest;
    if (config.path.empty() || config.path.front() != '/') {
      env.reject("DDP_INIT_METHOD", method, "a valid rendezvous address",
                 "file:// followed by an absolute path on a file system every rank sees, e.g. "
                 "file:///shared/ddp_rendezvous");
    }
    read_rank_and_size(env, config, "DDP_INIT_METHOD=file://... needs every rank's rank and the world size");
  } else if (has_slashes && scheme == "tcp") {
    config.method = Method::kTcp;
    parse_tcp_url(env, method, rest, config);
    read_rank_and_size(env, config, "DDP_INIT_METHOD=tcp://... needs every rank's rank and the world size");
  } else if (scheme == "env" && rest.empty()) {
    config.method = Method::kTcp;
    read_rank_and_size(env, config, "DDP_INIT_METHOD=env:// reads RANK and WORLD_SIZE");
    read_master(env, config);
  } else if (scheme == "mpi" && rest.empty()) {
    config.method = Method::kMpi;
  } else if (!method.empty()) {
    env.reject("DDP_INIT_METHOD", method, "known",
               "file:///path, tcp://host:port, env:// or mpi (or leave it unset to use torchrun's "
               "RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, or mpirun)");
  } else if (mpi_launch(env) && !env.master_addr()) {
    config.method = Method::kMpi;
  } else if (env.text("RANK") || env.text("WORLD_SIZE") || env.master_addr() ||
             (env.text("MASTER_PORT") && env.slurm_ntasks().value_or(1) == 1)) {
    config.method = Method::kTcp;
    read_rank_and_size(env, config, "torchrun-style launch (MASTER_ADDR/MASTER_PORT or RANK is set)");
    read_master(env, config);
  } else if (const auto tasks = env.slurm_ntasks(); tasks && *tasks != 1) {
    // srun without PMI: each task would otherwise be a world of its own, silently. The
    // store goes on the first host of the job's node list, as PyTorch's Slurm recipes do.
    config.method = Method::kTcp;
    const std::string why = fmt::format(
        "this is a Slurm job step of SLURM_NTASKS={} tasks started without an MPI launcher (srun without PMI), and "
        "its ranks must find rank 0 (docs/launch.md, \"Slurm\": libddp takes the first host of SLURM_JOB_NODELIST; "
        "else export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1), or use "
        "srun --mpi=pmix with the MPI backend)",
        *tasks);
    read_rank_and_size(env, config, why);
    const auto host = env.slurm_first_host();
    if (!host) missing("MASTER_ADDR", why);
    config.host = host->value;
    // One port per job, so that two jobs sharing a first node do not collide.
    const auto job = env.slurm_job_id();
    config.port = env.master_port().value_or(job ? kSlurmPortBase + *job % kSlurmPortRange : kSlurmPortBase);
    config.address_from = fmt::format("the first host of {} and {}", host->variable,
                                      env.master_port() ? "MASTER_PORT" : "a port from SLURM_JOB_ID");
  } else {
    config.method = Method::kSingle;
  }
  if (config.method != Method::kMpi && config.world_size == 1) {
    config.method = Method::kSingle;
  }
  return config;
}

std::string RendezvousConfig::store_prefix() const {
  return fmt::format("ddp/attempt_{}/{}/", restart_count, group_name);
}

std::string RendezvousConfig::describe() const {
  switch (method) {
    case Method::kSingle:
      return "a single process (no RANK/WORLD_SIZE/DDP_INIT_METHOD set)";
    case Method::kTcp:
      return fmt::format("tcp://{}:{} ({}{})", host, port, address_from,
                         agent_store ? ", served by torchrun's agent" : "");
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
    case RendezvousConfig::Method::kFile:
#if DDP_HAVE_C10D
      return std::make_unique<StoreRendezvous>(make_store(config), config);
#else
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] rendezvous through {} needs PyTorch's c10d stores, but this build of libddp has none (its "
          "LibTorch lacks the torch/csrc/distributed/c10d headers). Rebuild against the torch wheel's LibTorch, or "
          "launch with mpirun.",
          config.rank, config.describe()));
#endif
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
  const detail::Env env(getenv);
  if (env.launched_by_mpi()) return;
  for (const char* var : {"WORLD_SIZE", "SLURM_NTASKS"}) {
    const auto value = env.text(var);
    // Parsed like any other: a malformed value is an error naming it, not "several".
    if (!value || env.parse_integer(var, *value, 1, INT_MAX, "the number of processes of this job") == 1) continue;
    throw InvalidArgumentError(fmt::format(
        "{}init_process_group: {}=\"{}\" says this job has several processes, but this one was not started by an MPI "
        "launcher, so the MPI backend would see a world of 1 and train alone. The MPI backend (CPU tensors) needs "
        "its ranks started by mpirun -np N (or srun --mpi=pmix); a torchrun-style launch (RANK, WORLD_SIZE, "
        "MASTER_ADDR, MASTER_PORT) works with the gloo backend on CPU and the nccl backend on GPU "
        "(docs/launch.md). Unset {} to run one process.",
        env.prefix(), var, *value, var));
  }
}

} // namespace ddp
