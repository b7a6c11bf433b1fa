// The deferred step check (Options::StepCheck::kDeferred, the default on a CUDA process
// group): a backward in which this rank used every parameter returns without reading
// the ranks' flags, which are read once they have arrived. On the CPU it runs the same
// logic with MPI, so it is tested here; tests/gpu runs it on CUDA. Oracle results as in
// gradient_test.cpp, and misuse in pairs of ranks: an error on every rank, never a hang.
#include <catch2/catch.hpp>

#include "models.h"
#include "throw_in_backward.h"
#include "misuse_fixtures.h"
#include "world.h"

using Catch::Contains;
using ddp::test::rank_tag;

namespace {

ddp::Options deferred_options() {
  ddp::Options o = ddp::test::test_options();
  o.step_check(ddp::Options::StepCheck::kDeferred);
  o.timeout(std::chrono::seconds(10));
  return o;
}


using ddp::test::Injected;
using ddp::test::ThrowInBackward;

struct TwoLayerImpl : torch::nn::Module {
  TwoLayerImpl() {
    a = register_module("a", torch::nn::Linear(4, 4));
    b = register_module("b", torch::nn::Linear(4, 3));
  }
  torch::Tensor forward(torch::Tensor x) { return b(ThrowInBackward::apply(torch::tanh(a(x)), armed)); }
  torch::nn::Linear a{nullptr}, b{nullptr};
  bool armed = false;
};
TORCH_MODULE(TwoLayer);

} // namespace

TEST_CASE("deferred step check: gradients equal the oracle, and the backward does not read the flags", "[deferred]") {
  auto pg = ddp::test::world_ptr();
  const int n = pg->size();
  const int r = pg->rank();
  torch::manual_seed(11);
  ddp::test::Mlp oracle;
  torch::manual_seed(11);
  ddp::test::Mlp local;
  ddp::DistributedDataParallel model(local, pg, deferred_options());
  torch::optim::SGD opt(local->parameters(), 0.1);
  torch::optim::SGD oracle_opt(oracle->parameters(), 0.1);
  constexpr int kIterations = 4;
  for (int it = 0; it < kIterations; ++it) {
    torch::manual_seed(100 + it);
    auto x = torch::randn({4 * n, 8});
    auto y = torch::randint(4, {4 * n});
    opt.zero_grad();
    torch::nn::functional::cross_entropy(model(x.narrow(0, 4 * r, 4)), y.narrow(0, 4 * r, 4)).backward();
    oracle_opt.zero_grad();
    torch::nn::functional::cross_entropy(oracle->forward(x), y).backward();
    const double tolerance = ddp::test::reduction_tolerance(
        at::kFloat, ddp::test::gradient_terms_at(ddp::test::MlpImpl::reduction_terms(4 * n), it));
    auto got = ddp::test::gradients_of(*local);
    auto want = ddp::test::gradients_of(*oracle);
    for (size_t i = 0; i < got.size(); ++i) {
      CAPTURE(it, got[i].first, tolerance);
      CHECK(ddp::test::max_relative_error(got[i].second, want[i].second) <= tolerance);
      CHECK(ddp::test::identical_across_ranks(got[i].second));
    }
    opt.step();
    oracle_opt.step();
  }
  // Iteration 0 reads its flags (it learns the bucket order); every later one defers.
  CHECK(model->reducer().stats().deferred_flag_reads == kIterations - 1);
  // Asking for the unused parameters reads what is pending.
  CHECK(model->reducer().unused_parameters().empty());
}

TEST_CASE("deferred step check: a parameter this rank did not use still gets the right gradient at once",
          "[deferred]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  torch::nn::Linear used(4, 3);
  torch::nn::Linear sometimes(4, 3);
  torch::nn::Sequential holder;
  holder->push_back("used", used);
  holder->push_back("sometimes", sometimes);
  ddp::DistributedDataParallel model(holder, pg, deferred_options());
  // The forward is the wrapper's (prepare/backward), the model decides per rank.
  for (int it = 0; it < 3; ++it) {
    holder->zero_grad();
    auto x = torch::full({2, 4}, static_cast<float>(r + 1));
    model->reducer().prepare_for_forward();
    auto out = used(x);
    if (r == 0) out = out + sometimes(x); // rank 0 only
    model->reducer().prepare_for_backward({out});
    out.sum().backward();
    // Only rank 0 used it: the average over ranks is rank 0's gradient / world size.
    auto rank0 = torch::full({2, 4}, 1.0f).sum(0).unsqueeze(0).expand({3, 4}) / pg->size();
    REQUIRE(sometimes->weight.grad().defined());
    CHECK(at::allclose(sometimes->weight.grad(), rank0));
    CHECK(ddp::test::identical_across_ranks(sometimes->weight.grad()));
  }
  // Rank 1 left `sometimes` without a gradient, so it read its flags every time; rank 0
  // used everything after the first iteration and deferred.
  CHECK(model->reducer().stats().deferred_flag_reads == (r == 0 ? 2 : 0));
}

TEST_CASE("deferred step check: a rank that skips a reduction is named on every rank, and nothing hangs",
          "[deferred]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  torch::manual_seed(3);
  torch::nn::Linear lin(4, 3);
  ddp::DistributedDataParallel model(lin, pg, deferred_options());
  std::string error;
  int error_step = -1;
  for (int step = 0; step < 6 && error.empty(); ++step) {
    try {
      if (r == 1 && step == 2) {
        auto guard = model->no_sync();
        model(torch::randn({2, 4})).sum().backward();
        continue;
      }
      model(torch::randn({2, 4})).sum().backward();
    } catch (const ddp::ReductionError& e) {
      error = e.what();
      error_step = step;
    }
  }
  CAPTURE(error, error_step);
  REQUIRE_FALSE(error.empty());
  // Read at the next forward after the mismatched headers arrived.
  CHECK((error_step >= 2 && error_step <= 4));
  CHECK_THAT(error, Contains(rank_tag(r)) && Contains("the ranks are out of step") && Contains("rank 1 is"));
  CHECK_THROWS_WITH(model(torch::randn({2, 4})), Contains("out of step")); // sticky
}

TEST_CASE("deferred step check: an exception in one rank's backward stops every rank with its cause", "[deferred]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  TwoLayer net;
  ddp::DistributedDataParallel model(net, pg, deferred_options());
  for (int it = 0; it < 2; ++it) model(torch::ones({2, 4})).sum().backward(); // past iteration 0: deferred
  std::string error;
  try {
    net->armed = r == 1;
    auto out = model(torch::ones({2, 4}));
    net->armed = false;
    try {
      out.sum().backward();
    } catch (const Injected&) {
      CHECK(r == 1);
    }
    model(torch::ones({2, 4})).sum().backward(); // rank 1: settles the step; rank 0: reads its flags
    model(torch::ones({2, 4})).sum().backward();
  } catch (const ddp::ReductionError& e) {
    error = e.what();
  }
  CAPTURE(error);
  CHECK_THAT(error, Contains(rank_tag(r)) && Contains("rank(s) 1 was interrupted") && Contains("restart"));
  CHECK_THROWS_AS(model(torch::ones({2, 4})), ddp::ReductionError); // sticky on every rank
}
