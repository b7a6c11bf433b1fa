// Rendezvous: how the ranks of a job find each other before a communicator exists.
// NCCL needs one opaque blob (its ncclUniqueId) created on rank 0 and handed to every
// other rank; a Rendezvous does exactly that and nothing more. It knows nothing of CUDA
// or NCCL, so it builds (and is tested) without them.
//
// Where the blob travels is chosen from the environment, like torchrun's env://:
//   DDP_INIT_METHOD=file:///path   a c10d::FileStore on a shared file (StoreRendezvous)
//   DDP_INIT_METHOD=tcp://host:port, env:// or RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
//                                  a c10d::TCPStore served by rank 0, or by torchrun's
//                                  agent (TORCHELASTIC_USE_AGENT_STORE=True) (StoreRendezvous)
//   SLURM_NTASKS > 1 without MPI   the same TCPStore on the first host of the node list
//   DDP_INIT_METHOD=mpi, or started by mpirun with MPI built
//                                  a broadcast over MPI (ProcessGroupRendezvous)
//   nothing set                    one process: rank 0 of a world of 1
// The stores are PyTorch's own (LibTorch ships them); src/comm/store_factory.h makes them.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ddp/defaults.h>

namespace ddp {

// Where and how to rendezvous; RendezvousConfig::from_env() reads it like torchrun does.
struct RendezvousConfig {
  enum class Method { kSingle, kTcp, kFile, kMpi };

  Method method = Method::kSingle;
  // For kMpi these are filled from MPI itself when the rendezvous is made.
  int rank = 0;
  int world_size = 1;
  // The rank within its node (LOCAL_RANK); -1 when the launcher did not say.
  int local_rank = -1;
  std::string host;          // kTcp: MASTER_ADDR
  int port = 0;              // kTcp: MASTER_PORT
  std::string path;          // kFile: the shared file
  std::chrono::milliseconds timeout = kDefaultTimeout;
  // Where host/port came from, for messages: "MASTER_ADDR/MASTER_PORT", "DDP_INIT_METHOD",
  // "SLURM_JOB_NODELIST", ...
  std::string address_from = "MASTER_ADDR/MASTER_PORT";
  // kTcp: torchrun's agent already serves the store on host:port
  // (TORCHELASTIC_USE_AGENT_STORE=True), so every rank, rank 0 too, is a client.
  bool agent_store = false;
  // TORCHELASTIC_RESTART_COUNT: each restart of the workers rendezvouses under its own
  // prefix of the (surviving) agent store, never reading an earlier attempt's keys.
  int restart_count = 0;
  // The process group's name (InitOptions::group_name); its keys live under it.
  std::string group_name = "default";

  // "ddp/attempt_<restart_count>/<group_name>/": the keys of this configuration's groups.
  std::string store_prefix() const;

  // Reads DDP_INIT_METHOD, RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT and
  // DDP_TIMEOUT_S (falling back to the MPI launcher's rank variables), all through
  // detail::Env (common/env.h). Throws InvalidArgumentError naming the variable that is
  // missing or malformed. `getenv` is replaceable so tests need not touch the process
  // environment.
  using EnvLookup = std::function<const char*(const char*)>;
  static RendezvousConfig from_env(const EnvLookup& getenv = nullptr);

  // e.g. "tcp://127.0.0.1:29500 (MASTER_ADDR/MASTER_PORT)", for error messages.
  std::string describe() const;
};

// Exchanges one opaque blob from rank 0 to every rank. Each rank of the job calls
// exchange() the same number of times, with the same keys, in the same order.
class Rendezvous {
 public:
  virtual ~Rendezvous() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Rank 0 publishes `bytes`; every rank (rank 0 included) returns rank 0's bytes.
  // Other ranks' `bytes` are ignored. `key` names this exchange (e.g. "nccl/1"); a
  // rank that asks for another key fails with an error naming both keys. Throws
  // TimeoutError when the other side does not arrive within the configured timeout,
  // CommError when the transport fails.
  virtual std::vector<char> exchange(const std::string& key, const std::vector<char>& bytes) = 0;
};

// Throws InvalidArgumentError, naming the variable, when the environment says the job has
// several processes (WORLD_SIZE or SLURM_NTASKS above 1) but no MPI launcher started this
// one: the MPI backend would silently be a world of 1. init_process_group calls it
// before creating an MPI group.
void check_mpi_launch(const RendezvousConfig::EnvLookup& getenv = nullptr);

// The rendezvous `config` asks for. kMpi starts MPI (only when MPI was built); kTcp and
// kFile need the c10d stores (DDP_HAVE_C10D) and throw InvalidArgumentError without them.
std::unique_ptr<Rendezvous> make_rendezvous(const RendezvousConfig& config);

} // namespace ddp
