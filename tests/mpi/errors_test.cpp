// Bad input across ranks: every rank gets the same clear error, nobody hangs.
#include <catch2/catch.hpp>

#include <functional>

#include "misuse_fixtures.h"
#include "world.h"

using Catch::Contains;
using ddp::test::TwoLayer;

TEST_CASE("models that differ across ranks give one clear error on every rank", "[errors]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  struct Case {
    std::string variant;
    std::string expect;
  };
  for (const Case& c : {Case{"count", "'extra.weight'"}, Case{"name", "'b_renamed.weight'"},
                        Case{"shape", "shape [5, 4]"}, Case{"dtype", "dtype Double"}}) {
    CAPTURE(c.variant);
    TwoLayer net(c.variant, r);
    try {
      ddp::DistributedDataParallel model(net, pg, ddp::test::test_options());
      FAIL("no error for a model that differs on rank 1");
    } catch (const ddp::ModelMismatchError& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK_THAT(msg, Contains(c.expect));
      CHECK_THAT(msg, Contains("rank 1 has"));
      CHECK_THAT(msg, Contains("rank " + std::to_string(r) + "]"));
      CHECK_THAT(msg, Contains("Every rank must build the same model"));
    }
  }
}

TEST_CASE("parameters without requires_grad are skipped on every rank", "[errors]") {
  torch::nn::Sequential net(torch::nn::Linear(3, 3), torch::nn::Linear(3, 2));
  net[0]->as<torch::nn::Linear>()->weight.requires_grad_(false);
  ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), ddp::test::test_options());
  CHECK(model->reducer().parameter_names() == std::vector<std::string>{"0.bias", "1.weight", "1.bias"});
  model(torch::ones({2, 3})).sum().backward();
  CHECK_FALSE(net[0]->as<torch::nn::Linear>()->weight.grad().defined());
  CHECK(ddp::test::identical_across_ranks(net[1]->as<torch::nn::Linear>()->weight.grad()));
}

TEST_CASE("an empty parameter list is an error on every rank", "[errors]") {
  CHECK_THROWS_WITH(ddp::Reducer({}, ddp::test::world_ptr()), Contains("nothing to reduce"));
}

TEST_CASE("a rank whose own set-up fails is named on every rank at once, not after the timeout", "[errors]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  const std::string tag = "[ddp rank " + std::to_string(r) + "]";
  // The test timeout (60 s) would turn a peer left waiting into a TimeoutError, which
  // fails the type check below: the error must come from the construction exchange.
  for (const auto& c : ddp::test::set_up_failures()) {
    CAPTURE(c.what);
    torch::nn::Linear lin(3, 2);
    ddp::Options o = ddp::test::test_options();
    if (r == 1) c.break_rank1(lin, o);
    std::string msg;
    try {
      ddp::DistributedDataParallel model(lin, pg, o);
    } catch (const ddp::InvalidArgumentError& e) {
      msg = e.what();
    }
    CAPTURE(msg);
    CHECK_THAT(msg, Contains(c.expect));
    CHECK_THAT(msg, Contains("[ddp rank 1]"));
    if (r != 1) CHECK_THAT(msg, Contains(tag + " rank(s) 1 could not set up the reducer"));
  }
  // The group is still usable: every rank left the same exchange.
  torch::nn::Linear lin(3, 2);
  ddp::DistributedDataParallel model(lin, pg, ddp::test::test_options());
  model(torch::ones({2, 3})).sum().backward();
  CHECK(ddp::test::identical_across_ranks(lin->weight.grad()));
}

TEST_CASE("a rank late by more than the timeout: a clear TimeoutError, then the next step realigns", "[errors]") {
  auto pg = ddp::test::world_ptr();
  torch::nn::Linear net(4, 4);
  ddp::Options o = ddp::test::test_options();
  o.timeout(std::chrono::milliseconds(1000));
  ddp::DistributedDataParallel model(net, pg, o);
  auto out = model(torch::ones({2, 4}));
  if (pg->rank() != 0) {
    // Late, not dead: rank 0 gives up on this step's header after 1 s; we arrive at 2.5 s.
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    try {
      out.sum().backward();
      FAIL("backward returned averaged gradients although rank 0 gave up on this step");
    } catch (const ddp::ReductionError& e) {
      CHECK_THAT(std::string(e.what()), Contains("not averaged") && Contains("rank(s) 0 was interrupted"));
    }
  } else {
    try {
      out.sum().backward();
      FAIL("backward returned although the other ranks had not started it");
    } catch (const ddp::TimeoutError& e) {
      CHECK_THAT(std::string(e.what()), Contains("rank 0") && Contains("did not complete within 1000 ms"));
    }
    // The next forward completes the interrupted step with the late rank, then says so.
    // Started at ~2.5 s, it waits up to 1 s for the late rank's header: 1 s of margin on
    // either side of its arrival.
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    CHECK_THROWS_WITH(model(torch::ones({2, 4})),
                      Contains("did not finish") && Contains("did not start the same backward within the timeout") &&
                          Contains("ready"));
  }
  // Back in step: a normal iteration averages the gradients again.
  net->zero_grad();
  model(torch::full({2, 4}, static_cast<float>(pg->rank() + 1))).sum().backward();
  at::Tensor expected = at::zeros_like(net->weight);
  for (int q = 0; q < pg->size(); ++q) expected += 2.0f * static_cast<float>(q + 1);
  expected /= pg->size();
  CHECK(at::allclose(net->weight.grad(), expected));
  CHECK(ddp::test::identical_across_ranks(net->weight.grad()));
}
