#include "common/env.h"

#include <fmt/format.h>

#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>

#include <ddp/defaults.h>
#include <ddp/error.h>

#include "common/check.h"
#include "common/timeouts.h"

namespace ddp::detail {
namespace {

std::string prefix_for(int rank) {
  return rank >= 0 ? fmt::format("[ddp rank {}] ", rank) : std::string("[ddp rank ?] ");
}

bool equal_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  }
  return true;
}

// The accepted values of a seconds variable, for its error message.
std::string seconds_accepted(const char* name) {
  return fmt::format("a number of seconds from 0.001 (1 ms) to {:.0f}, with nothing before or after it (e.g. "
                     "{}=300 or {}=0.5)",
                     static_cast<double>(kNoDeadline.count()) / 1000.0, name, name);
}

} // namespace

std::string one_of(const std::vector<std::string_view>& words) {
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i > 0) out += i + 1 == words.size() ? " or " : ", ";
    out += words[i];
  }
  return out;
}

std::chrono::milliseconds parse_seconds(const char* name, const std::string& text, int rank) {
  const char* begin = text.c_str();
  char* end = nullptr;
  const double seconds = std::strtod(begin, &end);
  const bool parsed = !text.empty() && !std::isspace(static_cast<unsigned char>(text.front())) && end != begin &&
                      *end == '\0';
  const double max_seconds = static_cast<double>(kNoDeadline.count()) / 1000.0;
  // 0.001 is exactly 1 ms in doubles; anything shorter cannot be honoured (0 ms is no
  // wait at all), so it is an error rather than rounded up.
  const double ms = seconds * 1000.0;
  if (!parsed || !std::isfinite(seconds) || !(ms >= 1.0) || seconds > max_seconds) {
    throw InvalidArgumentError(fmt::format("{}environment variable {}=\"{}\" is not a valid timeout: use {}",
                                           prefix_for(rank), name, text, seconds_accepted(name)));
  }
  return std::chrono::milliseconds(static_cast<int64_t>(std::llround(ms)));
}

Env::Env(EnvLookup lookup, int rank) : lookup_(std::move(lookup)), rank_(rank >= 0 ? rank : world_rank()) {}

std::string Env::prefix() const { return prefix_for(rank_); }

void Env::reject(const char* name, const std::string& value, const std::string& what,
                 const std::string& accepted) const {
  throw InvalidArgumentError(
      fmt::format("{}environment variable {}=\"{}\" is not {}: use {}", prefix(), name, value, what, accepted));
}

std::optional<std::string> Env::text(const char* name) const {
  const char* value = lookup_ ? lookup_(name) : std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

std::optional<FromVariable<std::string>> Env::first_of(std::initializer_list<const char*> names) const {
  for (const char* name : names) {
    if (auto value = text(name)) return FromVariable<std::string>{std::move(*value), name};
  }
  return std::nullopt;
}

std::optional<std::chrono::milliseconds> Env::seconds(const char* name) const {
  auto value = text(name);
  if (!value) return std::nullopt;
  return parse_seconds(name, *value, rank_);
}

long long Env::parse_integer(const char* name, const std::string& value, long long min, long long max,
                             const std::string& meaning) const {
  errno = 0;
  char* end = nullptr;
  const long long parsed = std::strtoll(value.c_str(), &end, 10);
  const bool whole = !value.empty() && !std::isspace(static_cast<unsigned char>(value.front())) &&
                     end != value.c_str() && *end == '\0' && errno == 0;
  if (!whole || parsed < min || parsed > max) {
    reject(name, value, "valid", fmt::format("a whole number from {} to {} ({})", min, max, meaning));
  }
  return parsed;
}

std::optional<long long> Env::integer(const char* name, long long min, long long max,
                                      const std::string& meaning) const {
  auto value = text(name);
  if (!value) return std::nullopt;
  return parse_integer(name, *value, min, max, meaning);
}

std::optional<size_t> Env::word(const char* name, const std::vector<std::string_view>& words, const std::string& what,
                                const std::string& note) const {
  auto value = text(name);
  if (!value) return std::nullopt;
  for (size_t i = 0; i < words.size(); ++i) {
    if (equal_ignoring_case(*value, words[i])) return i;
  }
  reject(name, *value, what, fmt::format("{} (in any case{})", one_of(words), note));
}

// --- timeouts and the reducer's settings ---------------------------------------

std::optional<std::chrono::milliseconds> Env::timeout_override() const { return seconds("DDP_TIMEOUT_S"); }

std::chrono::milliseconds Env::timeout() const { return timeout_override().value_or(kDefaultTimeout); }

std::optional<std::chrono::milliseconds> Env::exit_timeout() const { return seconds("DDP_EXIT_TIMEOUT_S"); }

std::optional<std::string> Env::timeline_path() const { return text("DDP_TIMELINE"); }

std::optional<Options::StepCheck> Env::step_check() const {
  constexpr Options::StepCheck kModes[] = {Options::StepCheck::kAuto, Options::StepCheck::kStrict,
                                           Options::StepCheck::kDeferred};
  auto index = word("DDP_STEP_CHECK", {"auto", "strict", "deferred"}, "a step-check mode",
                    "; docs/semantics.md, \"Ranks in step\"; or unset it");
  if (!index) return std::nullopt;
  return kModes[*index];
}

Options Env::apply_to(Options options) const {
  // Read all three first, so that a bad value is reported whatever the code set.
  const auto timeout = timeout_override();
  auto timeline = timeline_path();
  const auto mode = step_check();
  if (timeout && options.timeout() == kDefaultTimeout) options.timeout(*timeout);
  if (timeline) options.timeline_path(std::move(*timeline));
  if (mode) options.step_check(*mode);
  return options;
}

// --- logging -------------------------------------------------------------------

LogSettings Env::log_settings() const {
  constexpr LogLevel kLevels[] = {LogLevel::kError, LogLevel::kWarn, LogLevel::kInfo, LogLevel::kDebug};
  constexpr DebugLevel kDebugLevels[] = {DebugLevel::kOff, DebugLevel::kInfo, DebugLevel::kDetail};
  LogSettings s;
  if (auto i = word("DDP_LOG_LEVEL", {"ERROR", "WARN", "INFO", "DEBUG"}, "a log level", "; default WARN")) {
    s.level = kLevels[*i];
  }
  // PyTorch's variable is honoured too, so a job launched for PyTorch DDP's debugging
  // gets libddp's; DDP_DEBUG, when set, wins.
  const char* debug_variable = text("DDP_DEBUG") ? "DDP_DEBUG" : "TORCH_DISTRIBUTED_DEBUG";
  if (auto i = word(debug_variable, {"OFF", "INFO", "DETAIL"}, "a debug level",
                    "; default OFF; DDP_DEBUG wins over TORCH_DISTRIBUTED_DEBUG")) {
    s.debug = kDebugLevels[*i];
  }
  // Asking for reducer diagnostics implies printing them.
  if (s.debug != DebugLevel::kOff && s.level < LogLevel::kInfo) s.level = LogLevel::kInfo;
  return s;
}

// --- the MPI backend ------------------------------------------------------------

CommThreadPriority Env::comm_thread_priority() const {
  constexpr CommThreadPriority kPriorities[] = {CommThreadPriority::kAuto, CommThreadPriority::kLow,
                                                CommThreadPriority::kNormal};
  auto i = word("DDP_COMM_THREAD_PRIORITY", {"auto", "low", "normal"}, "a thread priority",
                "; default auto: low when this node's ranks' compute threads fill its cores; docs/threads.md");
  return i ? kPriorities[*i] : CommThreadPriority::kAuto;
}

MpiWait Env::mpi_wait() const {
  auto i = word("DDP_MPI_WAIT", {"spin", "sleep"}, "an MPI wait mode",
                "; spin, the default: blocking MPI calls, which poll until the collective ends; sleep: test, then "
                "sleep between tests; the same on every rank");
  return i && *i == 1 ? MpiWait::kSleep : MpiWait::kSpin;
}

std::optional<std::chrono::microseconds> Env::mpi_wait_sleep() const {
  auto us = integer("DDP_MPI_WAIT_SLEEP_US", 1, 100000,
                    "microseconds: the longest sleep between two progress calls; default 100");
  if (!us) return std::nullopt;
  return std::chrono::microseconds(*us);
}

// --- launchers and rendezvous ----------------------------------------------------

std::optional<std::string> Env::init_method() const { return text("DDP_INIT_METHOD"); }

bool Env::launched_by_mpi() const {
  return first_of({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD"})
      .has_value();
}

std::optional<FromVariable<int>> Env::world_size() const {
  auto found = first_of({"WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"});
  if (!found) return std::nullopt;
  return FromVariable<int>{
      static_cast<int>(parse_integer(found->variable, found->value, 1, INT_MAX, "the number of processes")),
      found->variable};
}

std::optional<FromVariable<int>> Env::rank_in(FromVariable<int> size) const {
  auto found = first_of({"RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"});
  if (!found) return std::nullopt;
  return FromVariable<int>{
      static_cast<int>(parse_integer(found->variable, found->value, 0, size.value - 1,
                                     fmt::format("this process's rank, below {}={}", size.variable, size.value))),
      found->variable};
}

std::optional<FromVariable<int>> Env::local_rank() const {
  auto found = first_of({"LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"});
  if (!found) return std::nullopt;
  return FromVariable<int>{
      static_cast<int>(parse_integer(found->variable, found->value, 0, INT_MAX, "the rank within this node")),
      found->variable};
}

std::optional<FromVariable<int>> Env::local_world_size() const {
  auto found = first_of({"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "LOCAL_WORLD_SIZE"});
  if (!found) return std::nullopt;
  return FromVariable<int>{
      static_cast<int>(parse_integer(found->variable, found->value, 1, INT_MAX, "the number of ranks on this node")),
      found->variable};
}

std::optional<int> Env::slurm_ntasks() const {
  auto n = integer("SLURM_NTASKS", 1, INT_MAX, "the number of tasks of this Slurm job step");
  if (!n) return std::nullopt;
  return static_cast<int>(*n);
}

std::optional<std::string> Env::master_addr() const { return text("MASTER_ADDR"); }

std::optional<int> Env::master_port() const {
  auto port = integer("MASTER_PORT", 1, 65535, "a TCP port rank 0 can listen on");
  if (!port) return std::nullopt;
  return static_cast<int>(*port);
}

std::optional<FromVariable<std::string>> Env::slurm_first_host() const {
  auto found = first_of({"SLURM_JOB_NODELIST", "SLURM_NODELIST"});
  if (!found) return std::nullopt;
  const std::string& list = found->value;
  // Slurm's compressed host list: "prefix[a-b,c]suffix,other". The first host is the
  // prefix followed by the first number of the first bracket (its zero padding kept).
  const auto comma = list.find(',');
  const auto bracket = list.find('[');
  std::string host;
  if (bracket == std::string::npos || (comma != std::string::npos && comma < bracket)) {
    host = list.substr(0, comma);
  } else {
    const auto close = list.find(']', bracket);
    const auto first_end = list.find_first_of("-,]", bracket + 1);
    if (close == std::string::npos || first_end == bracket + 1) {
      reject(found->variable, list, "a Slurm node list", "e.g. node[01-04,07] or node1,node2 (as Slurm sets it)");
    }
    host = list.substr(0, bracket) + list.substr(bracket + 1, first_end - bracket - 1);
    // What follows the bracket up to the next host belongs to every host of the range.
    const auto next = list.find(',', close);
    host += list.substr(close + 1, next == std::string::npos ? std::string::npos : next - close - 1);
  }
  if (host.empty()) {
    reject(found->variable, list, "a Slurm node list", "e.g. node[01-04,07] or node1,node2 (as Slurm sets it)");
  }
  return FromVariable<std::string>{host, found->variable};
}

std::optional<int> Env::slurm_job_id() const {
  auto id = integer("SLURM_JOB_ID", 0, INT_MAX, "a Slurm job id");
  if (!id) return std::nullopt;
  return static_cast<int>(*id);
}

bool Env::use_agent_store() const {
  auto on = word("TORCHELASTIC_USE_AGENT_STORE", {"false", "true", "0", "1"}, "a boolean");
  return on && (*on == 1 || *on == 3);
}

int Env::restart_count() const {
  auto count = integer("TORCHELASTIC_RESTART_COUNT", 0, INT_MAX, "how often torchrun restarted the workers");
  return count ? static_cast<int>(*count) : 0;
}

std::optional<std::string> Env::gloo_socket_ifname() const { return text("GLOO_SOCKET_IFNAME"); }

std::optional<std::string> Env::cuda_visible_devices() const { return text("CUDA_VISIBLE_DEVICES"); }

} // namespace ddp::detail
