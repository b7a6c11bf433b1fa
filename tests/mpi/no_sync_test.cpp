// no_sync(): micro-steps accumulate locally without communication; the next synchronised
// backward reduces the accumulated sum.
#include <catch2/catch.hpp>

#include "models.h"
#include "world.h"

TEST_CASE("no_sync accumulates locally and the next synced backward reduces the sum", "[nosync]") {
  auto pg = ddp::test::world_ptr();
  const int n = pg->size();
  const int r = pg->rank();
  torch::manual_seed(5);
  ddp::test::Mlp oracle;
  torch::manual_seed(5);
  ddp::test::Mlp local;
  ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
  const int64_t collectives_before = model->reducer().stats().collectives;
  auto data = [n](int step) {
    torch::manual_seed(77 + step);
    return std::make_pair(torch::randn({4 * n, 8}), torch::randint(4, {4 * n}));
  };
  for (int step = 0; step < 3; ++step) {
    auto [x, y] = data(step);
    auto xs = x.narrow(0, 4 * r, 4);
    auto ys = y.narrow(0, 4 * r, 4);
    if (step < 2) {
      auto guard = model->no_sync();
      torch::nn::functional::cross_entropy(model(xs), ys).backward();
      // Nothing was communicated: the gradient is this rank's own.
      CHECK(model->reducer().stats().collectives == collectives_before);
    } else {
      torch::nn::functional::cross_entropy(model(xs), ys).backward();
    }
    for (int q = 0; q < n; ++q) {
      (torch::nn::functional::cross_entropy(oracle->forward(x.narrow(0, 4 * q, 4)), y.narrow(0, 4 * q, 4)) / n)
          .backward();
    }
  }
  CHECK(model->reducer().stats().collectives > collectives_before);
  // One iteration (no step), whose weight gradients sum 3 micro-steps x 4 samples x n
  // ranks: Mlp's chain with that global batch (models.h), in float32.
  const double tolerance = ddp::test::reduction_tolerance(
      ddp::test::least_precise_dtype(local->parameters()), ddp::test::MlpImpl::reduction_terms(3 * 4 * n));
  CAPTURE(tolerance);
  auto got = ddp::test::gradients_of(*local);
  auto want = ddp::test::gradients_of(*oracle);
  for (size_t i = 0; i < got.size(); ++i) {
    CAPTURE(got[i].first);
    CHECK(ddp::test::max_relative_error(got[i].second, want[i].second) <= tolerance);
    CHECK(ddp::test::identical_across_ranks(got[i].second));
  }
}
