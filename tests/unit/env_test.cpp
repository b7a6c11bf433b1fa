// The one reader of the environment (src/common/env.h): for every variable, its default,
// a good value, and bad ones (a wrong word, out of range, garbage), each rejected with
// the one error format naming the variable, its value, the accepted values and the rank.
// An empty value is the same as unset, for every variable. Reads go through a map, not
// the process environment.
#include <catch2/catch.hpp>

#include <chrono>
#include <climits>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <ddp/defaults.h>
#include <ddp/error.h>
#include <ddp/options.h>

#include "common/env.h"

namespace {

using Catch::Contains;
using ddp::detail::CommThreadPriority;
using ddp::detail::DebugLevel;
using ddp::detail::Env;
using ddp::detail::LogLevel;
using ddp::detail::MpiWait;
using namespace std::chrono_literals;

using Vars = std::map<std::string, std::string>;

Env env_of(Vars vars, int rank = 2) {
  auto shared = std::make_shared<Vars>(std::move(vars));
  return Env(
      [shared](const char* name) -> const char* {
        auto it = shared->find(name);
        return it == shared->end() ? nullptr : it->second.c_str();
      },
      rank);
}

// The message of the InvalidArgumentError `read` throws, or "no error".
std::string error_of(const std::function<void()>& read) {
  try {
    read();
  } catch (const ddp::InvalidArgumentError& e) {
    return e.what();
  }
  return "no error";
}

// The one format: rank, variable and value quoted, and what is accepted. (A class, not
// `Contains() && Contains()` returned from a function: Catch's combined matchers keep
// pointers to their parts.)
class Rejects : public Catch::MatcherBase<std::string> {
 public:
  Rejects(std::string name, std::string value, std::string accepted)
      : head_("[ddp rank 2] environment variable " + name + "=\"" + value + "\" is not "),
        accepted_(std::move(accepted)) {}
  bool match(const std::string& message) const override {
    const auto at = message.find(head_);
    return at != std::string::npos && message.find(": use ", at) != std::string::npos &&
           message.find(accepted_) != std::string::npos;
  }
  std::string describe() const override {
    return "is the env error starting \"" + head_ + "\" and accepting \"" + accepted_ + "\"";
  }

 private:
  std::string head_;
  std::string accepted_;
};

Rejects rejects(const std::string& name, const std::string& value, const std::string& accepted) {
  return Rejects(name, value, accepted);
}

} // namespace

TEST_CASE("one default timeout, written once", "[env]") {
  CHECK(ddp::kDefaultTimeout == std::chrono::minutes(10));
  CHECK(ddp::Options{}.timeout() == ddp::kDefaultTimeout);
}

TEST_CASE("seconds: DDP_TIMEOUT_S and DDP_EXIT_TIMEOUT_S", "[env]") {
  for (const char* name : {"DDP_TIMEOUT_S", "DDP_EXIT_TIMEOUT_S"}) {
    CAPTURE(name);
    auto read = [name](const std::string& value) { return env_of({{name, value}}).seconds(name); };
    CHECK_FALSE(env_of({}).seconds(name).has_value());
    CHECK_FALSE(read("").has_value()); // empty is unset
    CHECK(read("5") == 5000ms);
    CHECK(read("2.5") == 2500ms);
    CHECK(read("1e3") == 1000000ms);
    CHECK(read("0.001") == 1ms);  // the shortest that can be honoured
    CHECK(read("0.0015") == 2ms); // nearest millisecond
    CHECK(read("977616000") == std::chrono::milliseconds(977616000000LL));
    // Below 1 ms, zero, negative, not finite, too long, garbage, spaces: rejected.
    for (const char* bad : {"0.0001", "0.0009", "0", "-1", "-0.5", "nan", "inf", "-inf", "1e300", "5abc", "abc",
                            " ", " 5", "5 ", "5 s", "977616001"}) {
      CAPTURE(bad);
      CHECK_THAT(error_of([&] { read(bad); }), rejects(name, bad, "a number of seconds from 0.001 (1 ms) to 977616000"));
    }
  }
  CHECK(env_of({}).timeout() == ddp::kDefaultTimeout);
  CHECK(env_of({{"DDP_TIMEOUT_S", "30"}}).timeout() == 30s);
  CHECK_FALSE(env_of({}).exit_timeout().has_value()); // unset: the exit waits without bound
  CHECK(env_of({{"DDP_EXIT_TIMEOUT_S", "7"}}).exit_timeout() == 7s);
  CHECK_THAT(error_of([] { env_of({{"DDP_EXIT_TIMEOUT_S", "soon"}}).exit_timeout(); }),
             rejects("DDP_EXIT_TIMEOUT_S", "soon", "seconds"));
}

TEST_CASE("the rank in messages: given, else unknown", "[env]") {
  CHECK_THAT(error_of([] { ddp::detail::parse_seconds("DDP_TIMEOUT_S", "x", 5); }), Contains("[ddp rank 5] "));
  CHECK_THAT(error_of([] { ddp::detail::parse_seconds("DDP_TIMEOUT_S", "x", -1); }), Contains("[ddp rank ?] "));
}

TEST_CASE("words: any case, one of a set, named in the error", "[env]") {
  using StepCheck = ddp::Options::StepCheck;
  CHECK_FALSE(env_of({}).step_check().has_value());
  CHECK_FALSE(env_of({{"DDP_STEP_CHECK", ""}}).step_check().has_value());
  CHECK(env_of({{"DDP_STEP_CHECK", "auto"}}).step_check() == StepCheck::kAuto);
  CHECK(env_of({{"DDP_STEP_CHECK", "strict"}}).step_check() == StepCheck::kStrict);
  CHECK(env_of({{"DDP_STEP_CHECK", "Deferred"}}).step_check() == StepCheck::kDeferred);
  CHECK(env_of({{"DDP_STEP_CHECK", "STRICT"}}).step_check() == StepCheck::kStrict);
  for (const char* bad : {"x", "strictly", " strict", "1"}) {
    CAPTURE(bad);
    CHECK_THAT(error_of([&] { env_of({{"DDP_STEP_CHECK", bad}}).step_check(); }),
               rejects("DDP_STEP_CHECK", bad, "auto, strict or deferred") && Contains("is not a step-check mode"));
  }

  CHECK(env_of({}).mpi_wait() == MpiWait::kSpin);
  CHECK(env_of({{"DDP_MPI_WAIT", ""}}).mpi_wait() == MpiWait::kSpin);
  CHECK(env_of({{"DDP_MPI_WAIT", "spin"}}).mpi_wait() == MpiWait::kSpin);
  CHECK(env_of({{"DDP_MPI_WAIT", "Sleep"}}).mpi_wait() == MpiWait::kSleep);
  CHECK_THAT(error_of([] { env_of({{"DDP_MPI_WAIT", "poll"}}).mpi_wait(); }),
             rejects("DDP_MPI_WAIT", "poll", "spin or sleep"));

  CHECK(env_of({}).comm_thread_priority() == CommThreadPriority::kAuto);
  CHECK(env_of({{"DDP_COMM_THREAD_PRIORITY", "LOW"}}).comm_thread_priority() == CommThreadPriority::kLow);
  CHECK(env_of({{"DDP_COMM_THREAD_PRIORITY", "normal"}}).comm_thread_priority() == CommThreadPriority::kNormal);
  CHECK(env_of({{"DDP_COMM_THREAD_PRIORITY", "Auto"}}).comm_thread_priority() == CommThreadPriority::kAuto);
  // Was a warning and "auto" before: now an error like every other bad value.
  CHECK_THAT(error_of([] { env_of({{"DDP_COMM_THREAD_PRIORITY", "idle"}}).comm_thread_priority(); }),
             rejects("DDP_COMM_THREAD_PRIORITY", "idle", "auto, low or normal"));
}

TEST_CASE("DDP_LOG_LEVEL and DDP_DEBUG: levels in any case; a bad one is an error, not ignored", "[env]") {
  auto settings = [](Vars vars) { return env_of(std::move(vars)).log_settings(); };
  CHECK(settings({}).level == LogLevel::kWarn);
  CHECK(settings({}).debug == DebugLevel::kOff);
  CHECK(settings({{"DDP_LOG_LEVEL", ""}, {"DDP_DEBUG", ""}}).level == LogLevel::kWarn);
  CHECK(settings({{"DDP_LOG_LEVEL", "ERROR"}}).level == LogLevel::kError);
  CHECK(settings({{"DDP_LOG_LEVEL", "warn"}}).level == LogLevel::kWarn);
  CHECK(settings({{"DDP_LOG_LEVEL", "Info"}}).level == LogLevel::kInfo);
  CHECK(settings({{"DDP_LOG_LEVEL", "DEBUG"}}).level == LogLevel::kDebug);
  // TORCH_DISTRIBUTED_DEBUG's levels; asking for diagnostics raises the level to INFO.
  CHECK(settings({{"DDP_DEBUG", "OFF"}}).debug == DebugLevel::kOff);
  CHECK(settings({{"DDP_DEBUG", "info"}}).debug == DebugLevel::kInfo);
  CHECK(settings({{"DDP_DEBUG", "detail"}}).debug == DebugLevel::kDetail);
  CHECK(settings({{"DDP_DEBUG", "DETAIL"}, {"DDP_LOG_LEVEL", "ERROR"}}).level == LogLevel::kInfo);
  CHECK(settings({{"DDP_DEBUG", "DETAIL"}, {"DDP_LOG_LEVEL", "DEBUG"}}).level == LogLevel::kDebug);
  CHECK_THAT(error_of([&] { settings({{"DDP_LOG_LEVEL", "VERBOSE"}}); }),
             rejects("DDP_LOG_LEVEL", "VERBOSE", "ERROR, WARN, INFO or DEBUG"));
  CHECK_THAT(error_of([&] { settings({{"DDP_DEBUG", "1"}}); }), rejects("DDP_DEBUG", "1", "OFF, INFO or DETAIL"));
  // PyTorch's variable is an alias, read only when DDP_DEBUG is unset, and parsed alike.
  CHECK(settings({{"TORCH_DISTRIBUTED_DEBUG", "INFO"}}).debug == DebugLevel::kInfo);
  CHECK(settings({{"TORCH_DISTRIBUTED_DEBUG", "DETAIL"}}).level == LogLevel::kInfo);
  CHECK(settings({{"TORCH_DISTRIBUTED_DEBUG", "DETAIL"}, {"DDP_DEBUG", "OFF"}}).debug == DebugLevel::kOff);
  CHECK(settings({{"TORCH_DISTRIBUTED_DEBUG", ""}, {"DDP_DEBUG", "info"}}).debug == DebugLevel::kInfo);
  CHECK_THAT(error_of([&] { settings({{"TORCH_DISTRIBUTED_DEBUG", "verbose"}}); }),
             rejects("TORCH_DISTRIBUTED_DEBUG", "verbose", "OFF, INFO or DETAIL"));
}

TEST_CASE("integers: range-checked, whole, nothing around them", "[env]") {
  CHECK_FALSE(env_of({}).mpi_wait_sleep().has_value());
  CHECK_FALSE(env_of({{"DDP_MPI_WAIT_SLEEP_US", ""}}).mpi_wait_sleep().has_value());
  CHECK(env_of({{"DDP_MPI_WAIT_SLEEP_US", "1"}}).mpi_wait_sleep() == 1us);
  CHECK(env_of({{"DDP_MPI_WAIT_SLEEP_US", "100000"}}).mpi_wait_sleep() == 100000us);
  for (const char* bad : {"0", "-5", "100001", "12us", "x", " 12", "1.5", "99999999999999999999"}) {
    CAPTURE(bad);
    CHECK_THAT(error_of([&] { env_of({{"DDP_MPI_WAIT_SLEEP_US", bad}}).mpi_wait_sleep(); }),
               rejects("DDP_MPI_WAIT_SLEEP_US", bad, "a whole number from 1 to 100000") && Contains("microseconds"));
  }

  CHECK_FALSE(env_of({}).master_port().has_value());
  CHECK(env_of({{"MASTER_PORT", "29500"}}).master_port() == 29500);
  for (const char* bad : {"0", "65536", "http"}) {
    CAPTURE(bad);
    CHECK_THAT(error_of([&] { env_of({{"MASTER_PORT", bad}}).master_port(); }),
               rejects("MASTER_PORT", bad, "a whole number from 1 to 65535"));
  }
}

TEST_CASE("launcher variables: the first one set, range-checked, named in errors", "[env]") {
  CHECK_FALSE(env_of({}).world_size().has_value());
  auto size = env_of({{"OMPI_COMM_WORLD_SIZE", "4"}}).world_size();
  REQUIRE(size.has_value());
  CHECK(size->value == 4);
  CHECK(std::string(size->variable) == "OMPI_COMM_WORLD_SIZE");
  // WORLD_SIZE comes first; an empty one is unset and falls through.
  CHECK(env_of({{"WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_SIZE", "4"}}).world_size()->value == 2);
  CHECK(env_of({{"WORLD_SIZE", ""}, {"SLURM_NTASKS", "3"}}).world_size()->value == 3);
  CHECK_THAT(error_of([] { env_of({{"WORLD_SIZE", "0"}}).world_size(); }),
             rejects("WORLD_SIZE", "0", "a whole number from 1 to " + std::to_string(INT_MAX)));

  const ddp::detail::FromVariable<int> four{4, "WORLD_SIZE"};
  CHECK_FALSE(env_of({}).rank_in(four).has_value());
  CHECK(env_of({{"RANK", "3"}}).rank_in(four)->value == 3);
  CHECK(env_of({{"SLURM_PROCID", "1"}}).rank_in(four)->value == 1);
  CHECK_THAT(error_of([&] { env_of({{"RANK", "4"}}).rank_in(four); }),
             rejects("RANK", "4", "a whole number from 0 to 3") && Contains("below WORLD_SIZE=4"));

  CHECK_FALSE(env_of({}).local_rank().has_value());
  CHECK(env_of({{"MPI_LOCALRANKID", "1"}}).local_rank()->value == 1);
  CHECK_THAT(error_of([] { env_of({{"LOCAL_RANK", "-1"}}).local_rank(); }), rejects("LOCAL_RANK", "-1", "from 0"));

  // Was atoi (garbage became 0, then 1): now parsed like the rest.
  CHECK_FALSE(env_of({}).local_world_size().has_value());
  CHECK(env_of({{"OMPI_COMM_WORLD_LOCAL_SIZE", "8"}}).local_world_size()->value == 8);
  CHECK(env_of({{"LOCAL_WORLD_SIZE", "2"}}).local_world_size()->value == 2);
  CHECK_THAT(error_of([] { env_of({{"OMPI_COMM_WORLD_LOCAL_SIZE", "eight"}}).local_world_size(); }),
             rejects("OMPI_COMM_WORLD_LOCAL_SIZE", "eight", "a whole number from 1"));

  CHECK(env_of({{"SLURM_NTASKS", "16"}}).slurm_ntasks() == 16);
  CHECK_THAT(error_of([] { env_of({{"SLURM_NTASKS", "16(x2)"}}).slurm_ntasks(); }),
             rejects("SLURM_NTASKS", "16(x2)", "a whole number from 1"));
}

TEST_CASE("an MPI launch is recognised in one place; an empty variable is not a launch", "[env]") {
  CHECK_FALSE(env_of({}).launched_by_mpi());
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD"}) {
    CAPTURE(var);
    CHECK(env_of({{var, "2"}}).launched_by_mpi());
    CHECK_FALSE(env_of({{var, ""}}).launched_by_mpi());
  }
  CHECK_FALSE(env_of({{"WORLD_SIZE", "2"}, {"RANK", "0"}}).launched_by_mpi()); // torchrun is not MPI
}

TEST_CASE("paths and text are taken as written; empty is unset", "[env]") {
  CHECK_FALSE(env_of({}).timeline_path().has_value());
  CHECK_FALSE(env_of({{"DDP_TIMELINE", ""}}).timeline_path().has_value());
  CHECK(env_of({{"DDP_TIMELINE", "/tmp/Trace.json"}}).timeline_path() == "/tmp/Trace.json");
  CHECK(env_of({{"DDP_INIT_METHOD", "file:///Shared/x"}}).init_method() == "file:///Shared/x");
  CHECK(env_of({{"MASTER_ADDR", "node7"}}).master_addr() == "node7");
  CHECK_FALSE(env_of({{"CUDA_VISIBLE_DEVICES", ""}}).cuda_visible_devices().has_value());
  CHECK(env_of({{"CUDA_VISIBLE_DEVICES", "0,1"}}).cuda_visible_devices() == "0,1");
}

TEST_CASE("apply_to: the environment replaces defaults; a timeout set in code wins", "[env]") {
  ddp::Options defaults;
  const ddp::Options same = env_of({}).apply_to(defaults);
  CHECK(same.timeout() == ddp::kDefaultTimeout);
  CHECK(same.timeline_path().empty());
  CHECK(same.step_check() == ddp::Options::StepCheck::kAuto);

  const Vars vars{{"DDP_TIMEOUT_S", "3"}, {"DDP_TIMELINE", "/tmp/t.json"}, {"DDP_STEP_CHECK", "strict"}};
  const ddp::Options replaced = env_of(vars).apply_to(defaults);
  CHECK(replaced.timeout() == 3s);
  CHECK(replaced.timeline_path() == "/tmp/t.json");
  CHECK(replaced.step_check() == ddp::Options::StepCheck::kStrict);

  ddp::Options coded;
  coded.timeout(42s);
  coded.timeline_path("/code.json");
  coded.step_check(ddp::Options::StepCheck::kDeferred);
  const ddp::Options mixed = env_of(vars).apply_to(coded);
  CHECK(mixed.timeout() == 42s);                   // set in code: wins over DDP_TIMEOUT_S
  CHECK(mixed.timeline_path() == "/tmp/t.json");   // DDP_TIMELINE overrides
  CHECK(mixed.step_check() == ddp::Options::StepCheck::kStrict); // DDP_STEP_CHECK replaces

  // A bad value is an error even where code set the option.
  CHECK_THAT(error_of([&] { env_of({{"DDP_TIMEOUT_S", "0.0001"}}).apply_to(coded); }),
             rejects("DDP_TIMEOUT_S", "0.0001", "from 0.001"));
  CHECK_THAT(error_of([&] { env_of({{"DDP_STEP_CHECK", "never"}}).apply_to(coded); }),
             rejects("DDP_STEP_CHECK", "never", "auto, strict or deferred"));
}
