// What the reducer tells the user about unused parameters, as printed on stderr.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <ddp/ddp.h>

#include "common/logging.h"
#include "capture_stderr.h"
#include "loopback_process_group.h"

using Catch::Contains;

namespace {

using ddp::test::capture_stderr;

struct TwoHeadsImpl : torch::nn::Module {
  TwoHeadsImpl() {
    used = register_module("used", torch::nn::Linear(3, 3));
    spare = register_module("spare", torch::nn::Linear(3, 3));
  }
  torch::Tensor forward(torch::Tensor x) { return used(x); }
  torch::nn::Linear used{nullptr}, spare{nullptr};
};

} // namespace

TEST_CASE("unused parameters are reported once per new set, by name, with the remedies", "[logging]") {
  auto net = std::make_shared<TwoHeadsImpl>();
  ddp::DistributedDataParallel model(net, std::make_shared<ddp::test::LoopbackProcessGroup>());
  const std::string first = capture_stderr([&] {
    for (int i = 0; i < 3; ++i) model(torch::ones({1, 3})).sum().backward();
  });
  CHECK_THAT(first, Contains("[ddp rank 0 WARN] iteration 0: parameters that received no gradient") &&
                        Contains("spare.weight, spare.bias") && Contains("find_unused_parameters = true") &&
                        Contains("freeze them"));
  // Once per set: iterations 1 and 2 had the same set.
  CHECK(first.find("iteration 1:") == std::string::npos);
  CHECK(model->reducer().unused_parameters() == std::vector<std::string>{"spare.weight", "spare.bias"});
}

TEST_CASE("DDP_DEBUG=DETAIL logs the unused set every iteration and the bucket layout", "[logging]") {
  setenv("DDP_DEBUG", "DETAIL", 1);
  ddp::detail::reload_log_settings();
  const std::string text = capture_stderr([] {
    auto net = std::make_shared<TwoHeadsImpl>();
    ddp::DistributedDataParallel model(net, std::make_shared<ddp::test::LoopbackProcessGroup>());
    for (int i = 0; i < 2; ++i) model(torch::ones({1, 3})).sum().backward();
  });
  unsetenv("DDP_DEBUG");
  ddp::detail::reload_log_settings();
  CHECK_THAT(text, Contains("bucket layout:") && Contains("bucket 0"));
  CHECK_THAT(text, Contains("iteration 0: unused on every rank: [spare.weight, spare.bias]"));
  CHECK_THAT(text, Contains("iteration 1: unused on every rank: [spare.weight, spare.bias]"));
}

TEST_CASE("a bad DDP_LOG_LEVEL or DDP_DEBUG is an error naming it; the settings stay as they were", "[logging]") {
  ::setenv("DDP_LOG_LEVEL", "debug", 1); // any case
  ddp::detail::reload_log_settings(4);
  CHECK(ddp::detail::log_level() == ddp::detail::LogLevel::kDebug);
  ::setenv("DDP_LOG_LEVEL", "LOUD", 1);
  CHECK_THROWS_WITH(ddp::detail::reload_log_settings(4),
                    Contains("[ddp rank 4] environment variable DDP_LOG_LEVEL=\"LOUD\"") &&
                        Contains("ERROR, WARN, INFO or DEBUG"));
  CHECK(ddp::detail::log_level() == ddp::detail::LogLevel::kDebug);
  ::unsetenv("DDP_LOG_LEVEL");
  ::setenv("DDP_DEBUG", "yes", 1);
  CHECK_THROWS_WITH(ddp::detail::reload_log_settings(4),
                    Contains("DDP_DEBUG=\"yes\"") && Contains("OFF, INFO or DETAIL"));
  ::unsetenv("DDP_DEBUG");
  ddp::detail::reload_log_settings();
  CHECK(ddp::detail::log_level() == ddp::detail::LogLevel::kWarn);
  CHECK(ddp::detail::debug_level() == ddp::detail::DebugLevel::kOff);
}
