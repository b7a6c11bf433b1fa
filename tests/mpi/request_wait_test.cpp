// How the MPI backend waits for its collectives (src/comm/mpi/request_wait.h): the
// settings' parsing. The collectives themselves run in both modes
// through the conformance cases (ctest mpi_np*_pg and mpi_np*_sleep_wait).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <optional>
#include <string>

#include <ddp/ddp.h>
#include <ddp/error.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "comm/mpi/request_wait.h"
#include "world.h"

namespace {

// Sets an environment variable for one scope and restores what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

using ddp::mpi::WaitMode;
using ddp::mpi::WaitPolicy;

} // namespace

TEST_CASE("the MPI wait mode: spin by default, sleep when asked", "[mpi][pg]") {
  ScopedEnv sleep_us("DDP_MPI_WAIT_SLEEP_US", nullptr);
  for (const char* unset_or_empty : {static_cast<const char*>(nullptr), ""}) {
    ScopedEnv mode("DDP_MPI_WAIT", unset_or_empty);
    CHECK(WaitPolicy::from_env(0).mode == WaitMode::kSpin);
  }
  {
    ScopedEnv mode("DDP_MPI_WAIT", "spin");
    CHECK(WaitPolicy::from_env(0).mode == WaitMode::kSpin);
  }
  {
    ScopedEnv mode("DDP_MPI_WAIT", "sleep");
    const WaitPolicy policy = WaitPolicy::from_env(0);
    CHECK(policy.mode == WaitMode::kSleep);
    CHECK(policy.max_sleep == std::chrono::microseconds(100));
    CHECK_THAT(policy.describe(), Catch::Contains("100 us"));
  }
}

TEST_CASE("the MPI wait settings reject bad values, naming the variable, the rank and the choices", "[mpi][pg]") {
  {
    ScopedEnv mode("DDP_MPI_WAIT", "poll");
    CHECK_THROWS_AS(WaitPolicy::from_env(3), ddp::InvalidArgumentError);
    CHECK_THROWS_WITH(WaitPolicy::from_env(3), Catch::Contains("DDP_MPI_WAIT=\"poll\"") &&
                                                      Catch::Contains("rank 3") && Catch::Contains("spin") &&
                                                      Catch::Contains("sleep"));
  }
  ScopedEnv mode("DDP_MPI_WAIT", "sleep");
  for (const char* bad : {"0", "-5", "12us", "100001", "x"}) {
    CAPTURE(bad);
    ScopedEnv sleep_us("DDP_MPI_WAIT_SLEEP_US", bad);
    CHECK_THROWS_WITH(WaitPolicy::from_env(1), Catch::Contains("DDP_MPI_WAIT_SLEEP_US") &&
                                                      Catch::Contains("rank 1") && Catch::Contains("microseconds"));
  }
  ScopedEnv sleep_us("DDP_MPI_WAIT_SLEEP_US", "250");
  CHECK(WaitPolicy::from_env(0).max_sleep == std::chrono::microseconds(250));
}

// Different modes make different MPI calls, which never match: creating the group must
// fail on every rank, naming each rank's mode, instead of hanging in the first collective.
TEST_CASE("ranks with different DDP_MPI_WAIT modes fail at group creation, all of them", "[mpi][pg]") {
  auto world = ddp::test::world_ptr();
  const int rank = world->rank();
  const int last = world->size() - 1;
  ScopedEnv sleep_us("DDP_MPI_WAIT_SLEEP_US", nullptr);
  {
    ScopedEnv mode("DDP_MPI_WAIT", rank == 0 ? "sleep" : "spin");
    CHECK_THROWS_AS(ddp::init_process_group("mpi"), ddp::InvalidArgumentError);
    CHECK_THROWS_WITH(ddp::init_process_group("mpi"),
                      Catch::Contains("different DDP_MPI_WAIT modes") && Catch::Contains("rank 0: sleep") &&
                          Catch::Contains(fmt::format("rank {}: spin", last)) &&
                          Catch::Contains(fmt::format("[ddp rank {}]", rank)));
  }
  {
    // A value one rank rejects: that rank says why, the others name it.
    ScopedEnv mode("DDP_MPI_WAIT", rank == last ? "poll" : "sleep");
    if (rank == last) {
      CHECK_THROWS_WITH(ddp::init_process_group("mpi"), Catch::Contains("DDP_MPI_WAIT=\"poll\""));
    } else {
      CHECK_THROWS_WITH(ddp::init_process_group("mpi"),
                        Catch::Contains(fmt::format("rank {} rejected its DDP_MPI_WAIT", last)));
    }
  }
  // The failed creations left nothing half-made: a new group in either mode works.
  for (const char* agreed : {"spin", "sleep"}) {
    CAPTURE(agreed);
    ScopedEnv mode("DDP_MPI_WAIT", agreed);
    auto pg = ddp::init_process_group("mpi");
    at::Tensor t = at::ones({(1 << 18) + 3});
    pg->allreduce(t)->wait(std::chrono::seconds(60));
    CHECK(at::equal(t, at::full_like(t, world->size())));
  }
}

// Settings read through detail::Env at init_process_group: a bad value fails there on every
// rank (each rank has the same environment), naming the rank, the variable and the choices.
TEST_CASE("init_process_group rejects a bad DDP_LOG_LEVEL and a timeout below 1 ms, naming them", "[mpi][pg]") {
  const int rank = ddp::test::world_ptr()->rank();
  {
    ScopedEnv level("DDP_LOG_LEVEL", "LOUD");
    CHECK_THROWS_WITH(ddp::init_process_group("mpi"),
                      Catch::Contains(fmt::format("[ddp rank {}] environment variable DDP_LOG_LEVEL=\"LOUD\"", rank)) &&
                          Catch::Contains("ERROR, WARN, INFO or DEBUG"));
  }
  {
    ScopedEnv timeout("DDP_TIMEOUT_S", "0.0001");
    CHECK_THROWS_WITH(ddp::init_process_group("mpi"),
                      Catch::Contains(fmt::format("[ddp rank {}] environment variable DDP_TIMEOUT_S=\"0.0001\"", rank)) &&
                          Catch::Contains("from 0.001 (1 ms)"));
  }
  ScopedEnv level("DDP_LOG_LEVEL", "warn"); // any case
  ScopedEnv timeout("DDP_TIMEOUT_S", "2.5");
  auto pg = ddp::init_process_group("mpi");
  CHECK(pg->timeout() == std::chrono::milliseconds(2500));
  at::Tensor t = at::ones({5});
  pg->allreduce(t)->wait(std::chrono::seconds(60));
  CHECK(at::equal(t, at::full_like(t, pg->size())));
}
