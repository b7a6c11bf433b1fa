// Misuse across ranks (tests/mpi/misuse_test.cpp, errors_test.cpp), with the ranks as
// threads of this process (tests/support/thread_ranks.h) at world 2, 3 and 4, so that
// these cases also run in the unit tests and under the sanitizers. Rank 1 is the odd one
// out; the others behave like rank 0. Every rank records what it saw and the assertions,
// the same message fragments as the mpirun versions check, run on the main thread. Short
// timeouts: a detection that failed shows up as a TimeoutError (a failed check), and a
// rank that hangs is aborted by the runner; no assertion depends on timing.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <fmt/format.h>

#include <functional>
#include <string>
#include <vector>

#include <ddp/ddp.h>

#include "misuse_fixtures.h"
#include "rank_results.h"
#include "thread_ranks.h"
#include "throw_in_backward.h"
#include "world.h"

using Catch::Contains;
using ddp::test::Injected;
using ddp::test::require_values;
using ddp::test::run_ranks;
using ddp::test::ThrowInBackward;
using PG = std::shared_ptr<ddp::ProcessGroup>;
using ddp::test::average_linear_weight_grad;
using ddp::test::input_of;
using ddp::test::linear_weight_grad;
using ddp::test::rank_tag;
using ddp::test::short_timeout;
using ddp::test::Frozen;
using ddp::test::SmallNet;
using ddp::test::ThrowingNet;
using ddp::test::TwoLayer;

namespace {

// What a rank saw: the libddp error's message, or `fallback` when there was none.
template <class F>
std::string error_of(F&& f, const std::string& fallback = "no error") {
  try {
    f();
  } catch (const ddp::Error& e) {
    return e.what();
  }
  return fallback;
}

const int kWorlds[] = {2, 3, 4};

} // namespace

TEST_CASE("thread ranks: options that shape the collectives must agree: every rank names the option and each value",
          "[threads][misuse]") {
  const auto cases = ddp::test::option_mismatches();
  for (int n : kWorlds) {
    for (const auto& c : cases) {
      CAPTURE(n, c.name);
      auto results = run_ranks(n, [&](int r, PG pg) {
        SmallNet net(true);
        ddp::Options o = short_timeout();
        if (r == 1) c.change(o);
        try {
          ddp::DistributedDataParallel model(net, pg, o);
        } catch (const ddp::ModelMismatchError& e) {
          return std::string(e.what());
        }
        return std::string("no error although rank 1 set Options::" + c.name + " differently");
      });
      require_values(results);
      for (const auto& r : results) {
        CAPTURE(r.rank);
        CHECK_THAT(*r.value, Contains("Options::" + c.name + " differs across ranks") &&
                                 Contains("rank 1 has " + c.value) && Contains(rank_tag(r.rank)) &&
                                 Contains("must be equal on every rank"));
      }
    }
  }
}

TEST_CASE("thread ranks: frozen parameters and buffers are checked across ranks too", "[threads][misuse]") {
  struct Case {
    std::string variant;
    std::string expect;
  };
  for (int n : kWorlds) {
    for (const Case& c : {Case{"shape", "'frozen.weight' shape [5, 4] dtype Float (frozen)"},
                          Case{"dtype", "'frozen.weight' shape [4, 4] dtype Double (frozen)"},
                          Case{"count", "'extra.weight'"}, Case{"which", "'trunk.bias' shape [4] dtype Float (frozen)"}}) {
      CAPTURE(n, c.variant);
      auto results = run_ranks(n, [&](int r, PG pg) {
        Frozen net(c.variant, r);
        try {
          ddp::DistributedDataParallel model(net, pg, short_timeout());
        } catch (const ddp::ModelMismatchError& e) {
          return std::string(e.what());
        }
        return std::string("no error although rank 1's frozen parameters differ");
      });
      require_values(results);
      for (const auto& r : results) {
        CAPTURE(r.rank);
        CHECK_THAT(*r.value,
                   Contains("rank 1 has " + c.expect) && Contains(rank_tag(r.rank)) && Contains("the same ones frozen"));
      }
    }
    // Buffers: rank 1's BatchNorm has one more feature.
    CAPTURE(n);
    auto results = run_ranks(n, [](int r, PG pg) {
      torch::nn::Sequential bn_net(torch::nn::Linear(4, 4),
                                   torch::nn::BatchNorm1d(torch::nn::BatchNorm1dOptions(r == 1 ? 5 : 4).affine(false)));
      return error_of([&] { ddp::DistributedDataParallel model(bn_net, pg, short_timeout()); });
    });
    require_values(results);
    for (const auto& r : results) {
      CAPTURE(r.rank);
      CHECK_THAT(*r.value, Contains("buffer #0") && Contains("rank 1 has '1.running_mean' shape [5]"));
    }
  }
}

TEST_CASE("thread ranks: models that differ across ranks give one clear error on every rank", "[threads][misuse]") {
  struct Case {
    std::string variant;
    std::string expect;
  };
  for (int n : kWorlds) {
    for (const Case& c : {Case{"count", "'extra.weight'"}, Case{"name", "'b_renamed.weight'"},
                          Case{"shape", "shape [5, 4]"}, Case{"dtype", "dtype Double"}}) {
      CAPTURE(n, c.variant);
      auto results = run_ranks(n, [&](int r, PG pg) {
        TwoLayer net(c.variant, r);
        try {
          ddp::DistributedDataParallel model(net, pg, short_timeout());
        } catch (const ddp::ModelMismatchError& e) {
          return std::string(e.what());
        }
        return std::string("no error for a model that differs on rank 1");
      });
      require_values(results);
      for (const auto& r : results) {
        CAPTURE(r.rank);
        CHECK_THAT(*r.value, Contains(c.expect) && Contains("rank 1 has") &&
                                 Contains("rank " + std::to_string(r.rank) + "]") &&
                                 Contains("Every rank must build the same model"));
      }
    }
  }
}

TEST_CASE("thread ranks: a rank that skips one reduction is named on every rank within one step", "[threads][misuse]") {
  for (int n : kWorlds) {
    for (const std::string variant :
         {"no_sync on one rank", "forward exception caught on one rank", "loss without the outputs on one rank"}) {
      for (bool with_buffers : {false, true}) {
        for (bool static_graph : {false, true}) {
          CAPTURE(n, variant, with_buffers, static_graph);
          auto results = run_ranks(n, [&](int, PG pg) {
            return ddp::test::run_with_a_skipped_step(pg, variant, with_buffers, static_graph);
          });
          require_values(results);
          for (const auto& r : results) {
            const ddp::test::SkipOutcome& seen = *r.value;
            CAPTURE(r.rank, seen.message, seen.after);
            REQUIRE_FALSE(seen.message.empty());
            CHECK((seen.step == 2 || seen.step == 3)); // the skipped step or the next one
            CHECK_THAT(seen.message, Contains(rank_tag(r.rank)) && Contains("the ranks are out of step") &&
                                         Contains("rank 0 is") && Contains("rank 1 is") && Contains("training step") &&
                                         Contains("no_sync() on some ranks"));
            CHECK_THAT(seen.after, Contains("out of step"));
          }
        }
      }
    }
  }
}

TEST_CASE("thread ranks: an exception inside backward: every rank is told, training goes on at the next step",
          "[threads][misuse]") {
  struct Seen {
    bool injected = false;   // this rank's backward raised the test's own exception
    std::string backward;    // the libddp error its backward raised
    std::string next_forward;
    at::Tensor bias_grad;    // after the recovered step
    bool a_identical = false, b_identical = false;
  };
  for (int n : kWorlds) {
    for (bool every_rank : {true, false}) {
      CAPTURE(n, every_rank);
      auto results = run_ranks(n, [&](int r, PG pg) {
        Seen seen;
        ThrowingNet net;
        ddp::DistributedDataParallel model(net, pg, short_timeout());
        model(input_of(r)).sum().backward(); // a good step
        net->zero_grad();
        const bool throws_here = every_rank || r == 1;
        net->armed = throws_here;
        auto out = model(input_of(r));
        net->armed = false;
        try {
          out.sum().backward();
        } catch (const Injected&) {
          seen.injected = true;
        } catch (const ddp::Error& e) {
          seen.backward = e.what();
        }
        if (throws_here) {
          // The next forward completes the interrupted step with the other ranks and says so.
          seen.next_forward = error_of([&] { model(input_of(r)); });
        }
        // Recovered: the next step averages the gradients again.
        net->zero_grad();
        model(input_of(r)).sum().backward();
        seen.bias_grad = net->b->bias.grad().clone();
        seen.a_identical = ddp::test::identical_across_ranks(net->a->weight.grad());
        seen.b_identical = ddp::test::identical_across_ranks(net->b->weight.grad());
        return seen;
      });
      require_values(results);
      for (const auto& r : results) {
        const Seen& seen = *r.value;
        CAPTURE(r.rank, seen.backward, seen.next_forward);
        const bool throws_here = every_rank || r.rank == 1;
        if (throws_here) {
          CHECK(seen.injected);
          CHECK_THAT(seen.next_forward, Contains(rank_tag(r.rank)) && Contains("did not finish") &&
                                            Contains("not averaged on any rank") && Contains("ready"));
        } else {
          CHECK_FALSE(seen.injected);
          CHECK_THAT(seen.backward, Contains(rank_tag(r.rank)) && Contains("not averaged") &&
                                        Contains("rank(s) 1 was interrupted") && Contains("still in step"));
        }
        // The last layer's bias has the batch size (2) as gradient on every rank.
        CHECK(at::allclose(seen.bias_grad, torch::full({4}, 2.0f)));
        CHECK(seen.a_identical);
        CHECK(seen.b_identical);
      }
    }
  }
}

TEST_CASE("thread ranks: uneven inputs without Join: the rank with an extra batch is told that a peer finished",
          "[threads][misuse]") {
  struct Seen {
    std::string error;
    bool timed_out = false;
  };
  for (int n : kWorlds) {
    CAPTURE(n);
    auto results = run_ranks(n, [](int r, PG pg) {
      Seen seen;
      torch::nn::Linear lin(4, 3);
      ddp::DistributedDataParallel model(lin, pg, short_timeout()); // a timeout here would be a failure
      const int batches = r == 1 ? 3 : 2;
      for (int b = 0; b < batches; ++b) {
        try {
          model(input_of(r)).sum().backward();
        } catch (const ddp::TimeoutError& e) {
          seen.timed_out = true;
          seen.error = e.what();
          break;
        } catch (const ddp::ReductionError& e) {
          seen.error = e.what();
          break;
        }
      }
      return seen;
    });
    require_values(results);
    std::string finished = "0";
    for (int q = 2; q < n; ++q) finished += "," + std::to_string(q);
    for (const auto& r : results) {
      CAPTURE(r.rank, r.value->error);
      CHECK_FALSE(r.value->timed_out);
      if (r.rank == 1) {
        CHECK_THAT(r.value->error, Contains(rank_tag(1)) && Contains("Rank(s) " + finished + " finished training") &&
                                       Contains("uneven inputs") && Contains("same number of batches"));
      } else {
        CHECK(r.value->error.empty());
      }
    }
  }
}

TEST_CASE("thread ranks: a rank whose own set-up fails is named on every rank at once", "[threads][misuse]") {
  for (int n : kWorlds) {
    for (const auto& c : ddp::test::set_up_failures()) {
      CAPTURE(n, c.what);
      // A long timeout: a peer left waiting in the construction exchange would end in a
      // TimeoutError (not the InvalidArgumentError asserted) or in the runner's timeout.
      auto results = run_ranks(n, [&](int r, PG pg) {
        torch::nn::Linear lin(3, 2);
        ddp::Options o = ddp::test::test_options();
        if (r == 1) c.break_rank1(lin, o);
        return error_of([&] { ddp::DistributedDataParallel model(lin, pg, o); });
      });
      require_values(results);
      for (const auto& r : results) {
        CAPTURE(r.rank, *r.value);
        CHECK_THAT(*r.value, Contains(c.expect) && Contains("[ddp rank 1]"));
        if (r.rank != 1) CHECK_THAT(*r.value, Contains(rank_tag(r.rank) + " rank(s) 1 could not set up the reducer"));
      }
    }
  }
}
