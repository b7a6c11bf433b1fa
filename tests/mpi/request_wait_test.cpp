// How the MPI backend waits for its collectives (src/comm/mpi/request_wait.h): the
// settings' parsing. The collectives themselves run in both modes
// through the conformance cases (ctest mpi_np*_pg and mpi_np*_sleep_wait).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <optional>
#include <string>

#include <ddp/error.h>

#include "comm/mpi/request_wait.h"

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

TEST_CASE("the MPI wait mode: spin by default, sleep when asked", "[pg]") {
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

TEST_CASE("the MPI wait settings reject bad values, naming the variable, the rank and the choices", "[pg]") {
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
