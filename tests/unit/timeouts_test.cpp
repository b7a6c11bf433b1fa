// Timeouts: environment values parsed strictly (an error naming the variable), deadlines
// that saturate instead of overflowing, and "no timeout" for milliseconds::max().
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>

#include <ddp/ddp.h>

#include "common/env.h"
#include "common/timeouts.h"
#include "loopback_process_group.h"

using Catch::Contains;
using std::chrono::milliseconds;

TEST_CASE("DDP_TIMEOUT_S accepts a number of seconds from 1 ms, rounded to whole milliseconds", "[timeouts]") {
  CHECK(ddp::detail::parse_seconds("DDP_TIMEOUT_S", "5", 0) == milliseconds(5000));
  CHECK(ddp::detail::parse_seconds("DDP_TIMEOUT_S", "2.5", 0) == milliseconds(2500));
  CHECK(ddp::detail::parse_seconds("DDP_TIMEOUT_S", "0.001", 0) == milliseconds(1));
  CHECK(ddp::detail::parse_seconds("DDP_TIMEOUT_S", "1e3", 0) == milliseconds(1000000));
}

TEST_CASE("a bad DDP_TIMEOUT_S is an error naming the variable and the value", "[timeouts]") {
  // Below 1 ms cannot be honoured: an error, not 1 ms on one rank and 0 on another.
  for (const char* bad : {"5abc", "nan", "inf", "-inf", "1e300", "0", "-1", "", " ", "abc", "5 s", "0.0001"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(ddp::detail::parse_seconds("DDP_TIMEOUT_S", bad, 3), ddp::InvalidArgumentError);
    CHECK_THROWS_WITH(ddp::detail::parse_seconds("DDP_TIMEOUT_S", bad, 3),
                      Contains("[ddp rank 3]") && Contains("DDP_TIMEOUT_S=\"" + std::string(bad) + "\"") &&
                          Contains("number of seconds"));
  }
}

TEST_CASE("deadlines saturate: milliseconds::max() is never, not an overflow into the past", "[timeouts]") {
  const auto now = std::chrono::steady_clock::now();
  CHECK(ddp::detail::deadline_after(milliseconds::max()) == std::chrono::steady_clock::time_point::max());
  CHECK(ddp::detail::deadline_after(milliseconds(1000)) > now);
  CHECK(ddp::detail::is_unbounded(milliseconds::max()));
  CHECK_FALSE(ddp::detail::is_unbounded(std::chrono::hours(24)));
  // A Work waited on with milliseconds::max() waits for completion instead of timing out.
  ddp::Work work("test collective", 1, 0);
  work.finish();
  CHECK_NOTHROW(work.wait(milliseconds::max()));
  ddp::Work pending("pending collective", 2, 0);
  CHECK_THROWS_AS(pending.wait(milliseconds(1)), ddp::TimeoutError);
  CHECK(pending.timed_out());
}

TEST_CASE("the reducer reads DDP_TIMEOUT_S strictly too", "[timeouts]") {
  auto pg = std::make_shared<ddp::test::LoopbackProcessGroup>();
  torch::nn::Linear lin(2, 2);
  ::setenv("DDP_TIMEOUT_S", "5abc", 1);
  CHECK_THROWS_WITH(ddp::DistributedDataParallel(lin, pg), Contains("DDP_TIMEOUT_S=\"5abc\""));
  ::setenv("DDP_TIMEOUT_S", "0.0001", 1);
  CHECK_THROWS_WITH(ddp::DistributedDataParallel(lin, pg),
                    Contains("DDP_TIMEOUT_S=\"0.0001\"") && Contains("from 0.001 (1 ms)"));
  ::setenv("DDP_TIMEOUT_S", "0.001", 1);
  {
    ddp::DistributedDataParallel model(lin, pg);
    CHECK(model->reducer().options().timeout() == milliseconds(1));
  }
  ::unsetenv("DDP_TIMEOUT_S");
}
