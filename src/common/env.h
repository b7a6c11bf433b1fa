// The one reader of the environment. Every variable libddp reads — its own DDP_* and the
// launchers' (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, OMPI_COMM_WORLD_*, SLURM_*, ...)
// — is read here, by one typed method each, with one parser per kind of value:
//   seconds   a finite decimal number from 0.001 (1 ms) up to kNoDeadline
//   integer   whole decimal number within a range
//   word      one of a fixed set, any case (e.g. DDP_STEP_CHECK=Strict)
//   text      a path or host name, taken as it is
// and one error: InvalidArgumentError
//   "[ddp rank R] environment variable NAME="VALUE" is not WHAT: use ACCEPTED"
// (rank "?" before this process knows it). Nothing is silently ignored or only logged.
// One rule for every variable: set to the empty string is the same as unset.
// docs/configuration.md lists every variable; keep it in step with this file.
//
// Reads are cheap and not cached (tests change the environment at run time); callers
// read once where the setting takes effect. An Env reads the process environment, or a
// lookup function, so tests need not touch the real one.
#pragma once

#include <chrono>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ddp/options.h>

#include "common/logging.h"

namespace ddp::detail {

// Returns the value of one variable, nullptr when it is unset.
using EnvLookup = std::function<const char*(const char*)>;

// A variable's value together with the variable it came from (a setting that falls back
// through several launchers' variables says which one it read).
template <typename T>
struct FromVariable {
  T value;
  const char* variable;
};

enum class MpiWait {
  kSpin,  // blocking MPI calls (default)
  kSleep, // nonblocking calls, tested with sleeps in between
};

enum class CommThreadPriority { kAuto, kLow, kNormal };

struct LogSettings {
  LogLevel level = LogLevel::kWarn;
  DebugLevel debug = DebugLevel::kOff;
};

// Parses seconds, for the variable `name` (the name is only for the message): a finite
// decimal number, at least 0.001 (a timeout below 1 ms cannot be honoured: it is not
// rounded up to one on some ranks and to zero on others), at most kNoDeadline (about 31
// years), nothing before or after it. Rounded to the nearest millisecond.
std::chrono::milliseconds parse_seconds(const char* name, const std::string& text, int rank);

class Env {
 public:
  // `lookup`: null reads the process environment (std::getenv). `rank` is named in
  // errors; -1 (unknown) uses detail::world_rank(), "?" when no group exists yet.
  explicit Env(EnvLookup lookup = nullptr, int rank = -1);
  explicit Env(int rank) : Env(nullptr, rank) {}

  int rank() const { return rank_; }

  // --- the variables -----------------------------------------------------------

  // DDP_TIMEOUT_S: seconds; nullopt when unset.
  std::optional<std::chrono::milliseconds> timeout_override() const;
  // DDP_TIMEOUT_S, else kDefaultTimeout.
  std::chrono::milliseconds timeout() const;
  // DDP_EXIT_TIMEOUT_S: seconds; nullopt (wait without bound) when unset.
  std::optional<std::chrono::milliseconds> exit_timeout() const;
  // DDP_TIMELINE: a path; nullopt when unset.
  std::optional<std::string> timeline_path() const;
  // DDP_STEP_CHECK: auto|strict|deferred; nullopt when unset.
  std::optional<Options::StepCheck> step_check() const;
  // Options with what the environment replaces: DDP_TIMEOUT_S when `options.timeout` is
  // still kDefaultTimeout (a timeout set in code wins), DDP_TIMELINE and DDP_STEP_CHECK
  // whenever set (they win over code). Throws on a bad value of any of them.
  Options apply_to(Options options) const;

  // DDP_LOG_LEVEL=ERROR|WARN|INFO|DEBUG (default WARN) and DDP_DEBUG=OFF|INFO|DETAIL
  // (default OFF; anything but OFF raises the level to at least INFO).
  LogSettings log_settings() const;

  // DDP_COMM_THREAD_PRIORITY=auto|low|normal (default auto).
  CommThreadPriority comm_thread_priority() const;
  // DDP_MPI_WAIT=spin|sleep (default spin).
  MpiWait mpi_wait() const;
  // DDP_MPI_WAIT_SLEEP_US: 1 to 100000; nullopt when unset.
  std::optional<std::chrono::microseconds> mpi_wait_sleep() const;

  // DDP_INIT_METHOD, as written (the rendezvous parses the URL); nullopt when unset.
  std::optional<std::string> init_method() const;

  // True when an MPI launcher started this process: any of OMPI_COMM_WORLD_SIZE,
  // PMI_SIZE, PMIX_RANK, MPI_LOCALNRANKS, HYDI_CONTROL_FD is set and not empty (Open MPI,
  // PMI-1/2 (MPICH, srun --mpi=pmi2), PMIx (srun --mpi=pmix), MPICH's Hydra). An empty
  // value counts as unset, as for every variable.
  bool launched_by_mpi() const;

  // The world size a launcher gave: WORLD_SIZE, else OMPI_COMM_WORLD_SIZE, PMI_SIZE,
  // SLURM_NTASKS; 1 to INT_MAX.
  std::optional<FromVariable<int>> world_size() const;
  // This process's rank: RANK, else OMPI_COMM_WORLD_RANK, PMI_RANK, SLURM_PROCID; 0 to
  // `size.value` - 1 (the message names `size.variable`).
  std::optional<FromVariable<int>> rank_in(FromVariable<int> size) const;
  // The rank within this node: LOCAL_RANK, else OMPI_COMM_WORLD_LOCAL_RANK,
  // MPI_LOCALRANKID, SLURM_LOCALID; 0 to INT_MAX.
  std::optional<FromVariable<int>> local_rank() const;
  // The ranks on this node: OMPI_COMM_WORLD_LOCAL_SIZE, else MPI_LOCALNRANKS,
  // LOCAL_WORLD_SIZE; 1 to INT_MAX.
  std::optional<FromVariable<int>> local_world_size() const;
  // SLURM_NTASKS alone (a Slurm step's task count); 1 to INT_MAX.
  std::optional<int> slurm_ntasks() const;
  // MASTER_ADDR: a host name or address; nullopt when unset.
  std::optional<std::string> master_addr() const;
  // MASTER_PORT: 1 to 65535; nullopt when unset.
  std::optional<int> master_port() const;
  // The first host of the Slurm job's node list: SLURM_JOB_NODELIST, else SLURM_NODELIST
  // ("node[07-09,12],gpu3" gives "node07"); nullopt when neither is set. Throws naming the
  // variable when the list cannot be read.
  std::optional<FromVariable<std::string>> slurm_first_host() const;
  // SLURM_JOB_ID: 0 to INT_MAX; nullopt when unset.
  std::optional<int> slurm_job_id() const;
  // TORCHELASTIC_USE_AGENT_STORE=True|False (torchrun's agent serves the store on
  // MASTER_ADDR:MASTER_PORT; every rank is a client); false when unset.
  bool use_agent_store() const;
  // TORCHELASTIC_RESTART_COUNT: how often torchrun restarted the workers, 0 to INT_MAX;
  // 0 when unset.
  int restart_count() const;
  // GLOO_SOCKET_IFNAME: the network interface gloo binds; nullopt when unset.
  std::optional<std::string> gloo_socket_ifname() const;
  // CUDA_VISIBLE_DEVICES, as written, for messages; nullopt when unset.
  std::optional<std::string> cuda_visible_devices() const;

  // --- the parsers, one per kind ----------------------------------------------

  // The value of `name`; nullopt when unset or empty.
  std::optional<std::string> text(const char* name) const;
  // The first of `names` that is set (not empty), with its value.
  std::optional<FromVariable<std::string>> first_of(std::initializer_list<const char*> names) const;
  // A seconds value (parse_seconds); nullopt when unset.
  std::optional<std::chrono::milliseconds> seconds(const char* name) const;
  // A whole number from `min` to `max`; `meaning` says what it is, for the message.
  std::optional<long long> integer(const char* name, long long min, long long max, const std::string& meaning) const;
  // The same for a value already read (e.g. the port inside DDP_INIT_METHOD).
  long long parse_integer(const char* name, const std::string& value, long long min, long long max,
                          const std::string& meaning) const;
  // One of `words` (compared in any case); its position in `words`. `what` names the
  // kind ("a step-check mode"); `note` ("; default auto") goes inside the parentheses
  // after the accepted words: "auto, strict or deferred (in any case; default auto)".
  std::optional<size_t> word(const char* name, const std::vector<std::string_view>& words, const std::string& what,
                             const std::string& note = {}) const;

  // The one error format: "[ddp rank R] environment variable NAME="VALUE" is not WHAT:
  // use ACCEPTED".
  [[noreturn]] void reject(const char* name, const std::string& value, const std::string& what,
                           const std::string& accepted) const;
  // "[ddp rank R] " or "[ddp rank ?] ".
  std::string prefix() const;

 private:
  EnvLookup lookup_;
  int rank_;
};

// "a, b or c".
std::string one_of(const std::vector<std::string_view>& words);

} // namespace ddp::detail
