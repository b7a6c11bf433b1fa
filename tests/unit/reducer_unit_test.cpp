// The reducer in one process (world size 1, loopback group): protocol errors and their
// messages, option checks, the timeline file.
#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>

#include <ddp/ddp.h>

#include "loopback_process_group.h"

using Catch::Contains;

namespace {
std::shared_ptr<ddp::test::LoopbackProcessGroup> loopback() {
  return std::make_shared<ddp::test::LoopbackProcessGroup>();
}
} // namespace

TEST_CASE("an empty or fully frozen parameter list is an error that says so", "[reducer]") {
  CHECK_THROWS_AS(ddp::Reducer({}, loopback()), ddp::InvalidArgumentError);
  CHECK_THROWS_WITH(ddp::Reducer({{"frozen", torch::zeros({2})}}, loopback()),
                    Contains("no parameter requires grad") && Contains("rank 0"));
  torch::nn::Linear lin(2, 2);
  for (auto& p : lin->parameters()) p.requires_grad_(false);
  CHECK_THROWS_WITH(ddp::DistributedDataParallel(lin, loopback()), Contains("nothing to reduce"));
}

TEST_CASE("bad options name the option and the rule", "[reducer]") {
  auto w = torch::zeros({2}, torch::requires_grad());
  ddp::Options o;
  o.bucket_cap_mb(0);
  CHECK_THROWS_WITH(ddp::Reducer({{"w", w}}, loopback(), o), Contains("Options::bucket_cap_mb") && Contains("> 0"));
  o = {};
  o.first_bucket_cap_mb(-1);
  CHECK_THROWS_WITH(ddp::Reducer({{"w", w}}, loopback(), o), Contains("Options::first_bucket_cap_mb"));
  o = {};
  o.timeout(std::chrono::milliseconds(0));
  CHECK_THROWS_WITH(ddp::Reducer({{"w", w}}, loopback(), o), Contains("Options::timeout"));
  CHECK_THROWS_WITH(ddp::Reducer({{"w", w}}, nullptr), Contains("process group is null"));
  auto v = torch::zeros({2}, torch::requires_grad());
  CHECK_THROWS_WITH(ddp::Reducer({{"same", w}, {"same", v}}, loopback()), Contains("'same'") && Contains("unique"));
}

TEST_CASE("shared parameters are reduced once", "[reducer]") {
  auto w = torch::zeros({2}, torch::requires_grad());
  ddp::Reducer reducer({{"a.weight", w}, {"b.weight", w}}, loopback());
  CHECK(reducer.parameter_names() == std::vector<std::string>{"a.weight"});
}

TEST_CASE("a second backward after one forward is an error naming the parameter and the fix", "[reducer]") {
  torch::nn::Linear lin(3, 2);
  ddp::DistributedDataParallel model(lin, loopback());
  auto out = model(torch::ones({4, 3}));
  out.sum().backward({}, /*retain_graph=*/true);
  CHECK(lin->weight.grad().defined());
  CHECK_THROWS_AS(out.sum().backward(), ddp::ReductionError);
  auto out2 = model(torch::ones({4, 3}));
  out2.sum().backward({}, true);
  CHECK_THROWS_WITH(out2.sum().backward(), Contains("second backward()") &&
                                               (Contains("'weight'") || Contains("'bias'")) &&
                                               Contains("no_sync()") && Contains("Sum the losses"));
  // The next iteration works again.
  auto out3 = model(torch::ones({4, 3}));
  CHECK_NOTHROW(out3.sum().backward());
}

TEST_CASE("under no_sync a second backward is fine: gradients accumulate", "[reducer]") {
  torch::nn::Linear lin(3, 2);
  ddp::DistributedDataParallel model(lin, loopback());
  {
    auto guard = model->no_sync();
    auto out = model(torch::ones({1, 3}));
    out.sum().backward({}, true);
    out.sum().backward();
  }
  CHECK(torch::allclose(lin->weight.grad(), torch::full({2, 3}, 2.0)));
  model(torch::ones({1, 3})).sum().backward();
  CHECK(torch::allclose(lin->weight.grad(), torch::full({2, 3}, 3.0)));
}

TEST_CASE("a gradient outside the reducer's protocol is an error with the fix", "[reducer]") {
  auto w = torch::ones({2}, torch::requires_grad());
  ddp::Reducer reducer({{"w", w}}, loopback());
  CHECK_THROWS_WITH((w * 2).sum().backward(), Contains("not prepared") && Contains("prepare_for_backward"));
}

TEST_CASE("the timeline is valid Chrome-trace JSON with ordered events", "[reducer][timeline]") {
  torch::nn::Sequential net(torch::nn::Linear(4, 8), torch::nn::Tanh(), torch::nn::Linear(8, 2));
  ddp::Options o;
  o.first_bucket_cap_mb(1e-6);
  o.bucket_cap_mb(1e-6);
  ddp::DistributedDataParallel model(net, loopback(), o);
  model->reducer().set_timeline_enabled(true);
  // The module's own forward bypasses DDP: its backward is refused with the fix.
  CHECK_THROWS_WITH(model->module()->forward(torch::ones({2, 4})).sum().backward(),
                    Contains("model(x), not model->module()->forward(x)"));
  CHECK(model->reducer().timeline().events().empty());
  for (int i = 0; i < 2; ++i) model(torch::ones({2, 4})).sum().backward();
  const auto& events = model->reducer().timeline().events();
  int hooks = 0, collectives = 0, finalizes = 0;
  for (const auto& e : events) {
    CHECK(e.end >= e.start);
    hooks += e.kind == ddp::Timeline::Kind::kHook;
    collectives += e.kind == ddp::Timeline::Kind::kCollective;
    finalizes += e.kind == ddp::Timeline::Kind::kFinalize;
  }
  CHECK(hooks == 8);       // 4 parameters x 2 iterations
  CHECK(collectives == 8); // one bucket each
  CHECK(finalizes == 2);
  const std::string path = "timeline_unit_test.json";
  model->reducer().write_timeline(path);
  const std::string written = "timeline_unit_test.rank0.json";
  const std::string cmd = "python3 -c \"import json,sys; ev=json.load(open(sys.argv[1])); "
                          "xs=[e for e in ev if e['ph']=='X']; assert len(xs)>=12, len(xs); "
                          "assert all(e['dur']>=0 for e in xs)\" " + written;
  CHECK(std::system(cmd.c_str()) == 0);
  std::remove(written.c_str());
}
