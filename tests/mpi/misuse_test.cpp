// Misuse across ranks, in pairs of ranks doing different things: each case ends in an
// error on every rank that names the cause, or in the right result. Nothing hangs: each
// case runs with a short timeout, and a detection that failed would show up as a
// TimeoutError (a failed check), not as a hang. Rank 1 is the odd one out; with 3 ranks,
// rank 2 behaves like rank 0. docs/errors.md has one row per case.
#include <catch2/catch.hpp>

#include <torch/csrc/autograd/custom_function.h>

#include <functional>

#include "capture_stderr.h"
#include "throw_in_backward.h"
#include "common/logging.h"
#include "misuse_fixtures.h"
#include "models.h"
#include "world.h"

using Catch::Contains;
using ddp::test::identical_across_ranks;
using ddp::test::average_linear_weight_grad;
using ddp::test::input_of;
using ddp::test::linear_weight_grad;
using ddp::test::rank_tag;
using ddp::test::short_timeout;
using ddp::test::Frozen;
using ddp::test::SmallNet;
using ddp::test::ThrowingNet;
using ddp::test::Injected;
using ddp::test::ThrowInBackward;

TEST_CASE("options that shape the collectives must agree: every rank names the option and each value", "[misuse]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  const auto cases = ddp::test::option_mismatches();
  for (const auto& c : cases) {
    CAPTURE(c.name);
    SmallNet net(true);
    ddp::Options o = short_timeout();
    if (r == 1) c.change(o);
    try {
      ddp::DistributedDataParallel model(net, pg, o);
      FAIL("no error although rank 1 set Options::" + c.name + " differently");
    } catch (const ddp::ModelMismatchError& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK_THAT(msg, Contains("Options::" + c.name + " differs across ranks") && Contains("rank 1 has " + c.value) &&
                          Contains(rank_tag(r)) && Contains("must be equal on every rank"));
    }
  }
}

TEST_CASE("frozen parameters and buffers are checked across ranks too, before anything is broadcast", "[misuse]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  struct Case {
    std::string variant;
    std::string expect;
  };
  for (const Case& c : {Case{"shape", "'frozen.weight' shape [5, 4] dtype Float (frozen)"},
                        Case{"dtype", "'frozen.weight' shape [4, 4] dtype Double (frozen)"},
                        Case{"count", "'extra.weight'"}, Case{"which", "'trunk.bias' shape [4] dtype Float (frozen)"}}) {
    CAPTURE(c.variant);
    Frozen net(c.variant, r);
    try {
      ddp::DistributedDataParallel model(net, pg, short_timeout());
      FAIL("no error although rank 1's frozen parameters differ");
    } catch (const ddp::ModelMismatchError& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK_THAT(msg, Contains("rank 1 has " + c.expect) && Contains(rank_tag(r)) && Contains("the same ones frozen"));
    }
  }
  // Buffers: rank 1's BatchNorm has one more feature.
  torch::nn::Sequential bn_net(torch::nn::Linear(4, 4),
                               torch::nn::BatchNorm1d(torch::nn::BatchNorm1dOptions(r == 1 ? 5 : 4).affine(false)));
  CHECK_THROWS_WITH(ddp::DistributedDataParallel(bn_net, pg, short_timeout()),
                    Contains("buffer #0") && Contains("rank 1 has '1.running_mean' shape [5]"));
}

TEST_CASE("a rank that skips one reduction is named on every rank within one step, never silent", "[misuse]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  for (const std::string variant :
       {"no_sync on one rank", "forward exception caught on one rank", "loss without the outputs on one rank"}) {
    for (bool with_buffers : {false, true}) {
      for (bool static_graph : {false, true}) {
        CAPTURE(variant, with_buffers, static_graph);
        torch::manual_seed(3);
        const auto seen = ddp::test::run_with_a_skipped_step(pg, variant, with_buffers, static_graph);
        const std::string& msg = seen.message;
        CAPTURE(msg, seen.after);
        REQUIRE_FALSE(msg.empty());
        CHECK((seen.step == 2 || seen.step == 3)); // the skipped step or the next one
        CHECK_THAT(msg, Contains(rank_tag(r)) && Contains("the ranks are out of step") && Contains("rank 0 is") &&
                            Contains("rank 1 is") && Contains("training step") && Contains("no_sync() on some ranks"));
        // Sticky: the ranks stay out of step, so every later call says so again.
        CHECK_THAT(seen.after, Contains("out of step"));
      }
    }
  }
}

TEST_CASE("a forward under NoGradGuard between a training forward and its backward changes nothing", "[misuse]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  for (bool with_buffers : {false, true}) {
    CAPTURE(with_buffers);
    torch::nn::Linear lin(4, 3);
    torch::nn::Sequential net(lin);
    if (with_buffers) net->push_back(torch::nn::BatchNorm1d(3));
    ddp::DistributedDataParallel model(net, pg, short_timeout());
    auto out = model(input_of(r));
    {
      // Evaluation in the middle: must not cancel the reduction, nor overwrite the buffers
      // that the pending backward saved (BatchNorm's running statistics).
      torch::NoGradGuard no_grad;
      net->eval();
      model(torch::randn({2, 4}));
      net->train();
    }
    if (with_buffers) {
      out.sum().backward();
      CHECK(identical_across_ranks(lin->weight.grad()));
      CHECK(model->reducer().stats().iterations == 1);
    } else {
      out.sum().backward();
      CHECK(at::allclose(lin->weight.grad(), average_linear_weight_grad(pg->size(), 3)));
      CHECK(identical_across_ranks(lin->weight.grad()));
    }
  }
}

TEST_CASE("an exception inside backward: every rank is told, and training goes on at the next step", "[misuse]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  for (bool every_rank : {true, false}) {
    CAPTURE(every_rank);
    ThrowingNet net;
    ddp::DistributedDataParallel model(net, pg, short_timeout());
    model(input_of(r)).sum().backward(); // a good step
    net->zero_grad();

    const bool throws_here = every_rank || r == 1;
    net->armed = throws_here;
    auto out = model(input_of(r));
    net->armed = false;
    if (throws_here) {
      CHECK_THROWS_AS(out.sum().backward(), Injected);
      // The next forward completes the interrupted step with the other ranks and says so.
      CHECK_THROWS_WITH(model(input_of(r)), Contains(rank_tag(r)) && Contains("did not finish") &&
                                                Contains("not averaged on any rank") && Contains("ready"));
    } else {
      CHECK_THROWS_WITH(out.sum().backward(), Contains(rank_tag(r)) && Contains("not averaged") &&
                                                  Contains("rank(s) 1 was interrupted") && Contains("still in step"));
    }
    // Recovered: the next step averages the gradients again. The last layer's bias has the
    // batch size (2) as gradient on every rank, so its average is 2; the ranks agree bit
    // for bit on the others.
    net->zero_grad();
    model(input_of(r)).sum().backward();
    CHECK(at::allclose(net->b->bias.grad(), torch::full({4}, 2.0f)));
    CHECK(identical_across_ranks(net->a->weight.grad()));
    CHECK(identical_across_ranks(net->b->weight.grad()));
  }
}

TEST_CASE("casting, moving or replacing parameters after wrapping is an error naming them", "[misuse]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  {
    ddp::test::Mlp net;
    ddp::DistributedDataParallel model(net, pg, short_timeout());
    model(torch::randn({2, 8})).sum().backward();
    net->to(torch::kDouble);
    // Named in the step of the change, on every rank, before any rank writes gradients
    // (the forward re-checks every parameter only when due; the backward notices).
    CHECK_THROWS_WITH(model(torch::randn({2, 8}, torch::kDouble)).sum().backward(),
                      Contains(rank_tag(r)) && Contains("'fc1.weight' changed after it was wrapped") &&
                          Contains("Double") && Contains("wrap it again"));
  }
  {
    ddp::test::Mlp net;
    ddp::DistributedDataParallel model(net, pg, short_timeout());
    model(torch::randn({2, 8})).sum().backward();
    net->fc2 = net->replace_module("fc2", torch::nn::Linear(16, 16));
    CHECK_THROWS_WITH(model(torch::randn({2, 8})).sum().backward(), Contains(rank_tag(r)) && Contains("'fc2.weight'") &&
                                                        Contains("'fc2.bias'") && Contains("replace_module"));
  }
  {
    ddp::test::Mlp net;
    net->fc1->weight.requires_grad_(false);
    ddp::DistributedDataParallel model(net, pg, short_timeout());
    net->fc1->weight.requires_grad_(true); // unfrozen after wrapping: its gradient would stay local
    CHECK_THROWS_WITH(model(torch::randn({2, 8})), Contains("'fc1.weight'") && Contains("unfrozen after wrapping"));
  }
}

TEST_CASE("Options::timeout = milliseconds::max() means no timeout, not an immediate one", "[misuse]") {
  auto pg = ddp::test::world_ptr();
  torch::nn::Linear lin(4, 3);
  ddp::Options o = ddp::test::test_options();
  o.timeout(std::chrono::milliseconds::max());
  ddp::DistributedDataParallel model(lin, pg, o);
  CHECK_NOTHROW(model(input_of(pg->rank())).sum().backward());
  CHECK(at::allclose(lin->weight.grad(), average_linear_weight_grad(pg->size(), 3)));
}

TEST_CASE("messages name the real cause: module()->forward, a module wrapped twice", "[misuse]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  torch::nn::Linear lin(4, 3);
  ddp::DistributedDataParallel model(lin, pg, short_timeout());
  model(input_of(r)).sum().backward();
  // A later forward through the module itself: not a "second backward".
  const std::string msg = [&] {
    try {
      model->module()->forward(input_of(r)).sum().backward();
    } catch (const ddp::ReductionError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  }();
  CAPTURE(msg);
  CHECK_THAT(msg, Contains(rank_tag(r)) && Contains("did not run through the wrapper") && Contains("model(x)"));
  CHECK_THAT(msg, !Contains("second backward"));

  CHECK_THROWS_WITH(ddp::DistributedDataParallel(lin, pg, short_timeout()),
                    Contains(rank_tag(r)) && Contains("already managed by another ddp::Reducer") &&
                        Contains("wrapped by two"));
  // The first wrapper still works.
  lin->zero_grad();
  model(input_of(r)).sum().backward();
  CHECK(at::allclose(lin->weight.grad(), average_linear_weight_grad(pg->size(), 3)));
}

TEST_CASE("a wrapper destroyed between forward and backward: a warning, and a local backward", "[misuse]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  torch::nn::Linear lin(4, 3);
  torch::Tensor out;
  ::setenv("DDP_LOG_LEVEL", "WARN", 1); // the warning must be printed whatever the caller's level
  ddp::detail::reload_log_settings();
  const std::string printed = ddp::test::capture_stderr([&] {
    ddp::DistributedDataParallel model(lin, pg, short_timeout());
    out = model(input_of(r));
  });
  ::unsetenv("DDP_LOG_LEVEL");
  ddp::detail::reload_log_settings();
  CHECK_THAT(printed, Contains(rank_tag(r).substr(0, rank_tag(r).size() - 1)) &&
                          Contains("destroyed after its forward and before its backward") &&
                          Contains("will not be reduced"));
  out.sum().backward();
  CHECK(at::allclose(lin->weight.grad(), linear_weight_grad(input_of(r), 3))); // this rank's own
}

TEST_CASE("uneven inputs: the rank with an extra batch is told that a peer finished, no timeout", "[misuse]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  torch::nn::Linear lin(4, 3);
  ddp::Options o = short_timeout(); // a TimeoutError here would be a failure: the peer said it finished
  std::string error;
  bool timed_out = false;
  {
    ddp::DistributedDataParallel model(lin, pg, o);
    const int batches = r == 1 ? 3 : 2;
    for (int b = 0; b < batches; ++b) {
      try {
        model(input_of(r)).sum().backward();
      } catch (const ddp::TimeoutError& e) {
        timed_out = true;
        error = e.what();
        break;
      } catch (const ddp::ReductionError& e) {
        error = e.what();
        break;
      }
    }
  }
  CAPTURE(error);
  CHECK_FALSE(timed_out);
  if (r == 1) {
    std::string finished = "0";
    for (int q = 2; q < pg->size(); ++q) finished += "," + std::to_string(q);
    CHECK_THAT(error, Contains(rank_tag(1)) && Contains("Rank(s) " + finished + " finished training") &&
                          Contains("uneven inputs") && Contains("same number of batches"));
  } else {
    CHECK(error.empty());
  }
}
