// ddp::Join on uneven inputs, at world 2 and 3: the last rank has 0, 1 or 5 fewer batches.
// Each step's gradients equal single-process autograd over the batches the active ranks
// processed (divided by the world size or by the active ranks), every rank ends with the
// same parameters and step count, throw_on_early_termination raises on every rank at the
// same step, and a second epoch with a new Join works. Expected values come from a plain
// oracle model, never from the code under test.
#include <catch2/catch.hpp>

#include <ddp/join.h>

#include "models.h"
#include "world.h"

using Catch::Contains;

namespace {

constexpr int kBatches = 6;
constexpr int64_t kRows = 4; // samples per batch and rank

// Rank q's batch b of an epoch, the same on every rank (the oracle replays them).
std::pair<torch::Tensor, torch::Tensor> batch_of(int epoch, int q, int b) {
  torch::manual_seed(1000 * epoch + 50 * q + b);
  return {torch::randn({kRows, 8}), torch::randint(4, {kRows})};
}

int batches_of(int q, int world, int fewer) { return q == world - 1 ? kBatches - fewer : kBatches; }

// One epoch of `fewer` missing batches on the last rank, checked step by step against the
// oracle. Returns the number of steps the active ranks took.
int train_epoch(ddp::DistributedDataParallel<ddp::test::MlpImpl>& model, ddp::test::Mlp& local,
                ddp::test::Mlp& oracle, torch::optim::SGD& opt, torch::optim::SGD& oracle_opt, int epoch, int fewer,
                bool divide_by_world, int& iteration) {
  auto pg = ddp::test::world_ptr();
  const int n = pg->size();
  const int r = pg->rank();
  ddp::JoinOptions options;
  options.divide_by_initial_world_size(divide_by_world);
  ddp::Join join(model, options);
  for (int b = 0; b < kBatches; ++b) {
    // The oracle takes this step on the batches of the ranks that still have one.
    std::vector<int> active;
    for (int q = 0; q < n; ++q) {
      if (b < batches_of(q, n, fewer)) active.push_back(q);
    }
    const double divisor = divide_by_world ? n : static_cast<double>(active.size());
    oracle_opt.zero_grad();
    for (int q : active) {
      auto [x, y] = batch_of(epoch, q, b);
      (torch::nn::functional::cross_entropy(oracle->forward(x), y) / divisor).backward();
    }
    if (b < batches_of(r, n, fewer)) {
      auto [x, y] = batch_of(epoch, r, b);
      opt.zero_grad();
      torch::nn::functional::cross_entropy(model(x), y).backward();
      const double tolerance = ddp::test::reduction_tolerance(
          at::kFloat, ddp::test::gradient_terms_at(ddp::test::MlpImpl::reduction_terms(kRows * n), iteration));
      auto got = ddp::test::gradients_of(*local);
      auto want = ddp::test::gradients_of(*oracle);
      for (size_t i = 0; i < got.size(); ++i) {
        CAPTURE(epoch, b, fewer, divide_by_world, got[i].first, tolerance);
        CHECK(ddp::test::max_relative_error(got[i].second, want[i].second) <= tolerance);
      }
      opt.step();
    }
    oracle_opt.step();
    iteration += 1;
  }
  join.join();
  return kBatches;
}

} // namespace

TEST_CASE("Join: uneven inputs train like one process on the batches processed, in both divide modes", "[join]") {
  auto pg = ddp::test::world_ptr();
  const int n = pg->size();
  for (int fewer : {0, 1, 5}) {
    for (bool divide_by_world : {true, false}) {
      CAPTURE(fewer, divide_by_world);
      torch::manual_seed(21);
      ddp::test::Mlp oracle;
      torch::manual_seed(21);
      ddp::test::Mlp local;
      ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
      torch::optim::SGD opt(local->parameters(), 0.1);
      torch::optim::SGD oracle_opt(oracle->parameters(), 0.1);
      int iteration = 0;
      // Two epochs, each under its own Join: the second starts from the state the first
      // left on every rank.
      for (int epoch = 0; epoch < 2; ++epoch) {
        train_epoch(model, local, oracle, opt, oracle_opt, epoch, fewer, divide_by_world, iteration);
        // Every rank leaves the Join with the same parameters, equal to the oracle's, and
        // the same step count.
        const double tolerance = ddp::test::reduction_tolerance(
            at::kFloat, ddp::test::parameter_terms_after(ddp::test::MlpImpl::reduction_terms(kRows * n), iteration - 1));
        for (const auto& p : local->named_parameters()) {
          CAPTURE(epoch, p.key(), tolerance);
          CHECK(ddp::test::identical_across_ranks(p.value()));
          CHECK(ddp::test::max_relative_error(p.value(), oracle->named_parameters()[p.key()]) <= tolerance);
        }
        CHECK(ddp::test::identical_across_ranks(torch::tensor(model->reducer().stats().iterations)));
      }
    }
  }
}

TEST_CASE("Join: buffers, find_unused_parameters, static_graph and no_sync under uneven inputs", "[join]") {
  auto pg = ddp::test::world_ptr();
  const int n = pg->size();
  const int r = pg->rank();
  for (int variant = 0; variant < 3; ++variant) {
    CAPTURE(variant);
    torch::manual_seed(4);
    torch::nn::Sequential net(torch::nn::Linear(8, 6), torch::nn::BatchNorm1d(6), torch::nn::ReLU(),
                              torch::nn::Linear(6, 4));
    ddp::Options o = ddp::test::test_options();
    o.find_unused_parameters(variant == 1);
    o.static_graph(variant == 2);
    ddp::DistributedDataParallel model(net, pg, o);
    torch::optim::SGD opt(net->parameters(), 0.05);
    const int mine = r == n - 1 ? 2 : 5;
    {
      ddp::Join join(model);
      for (int b = 0; b < mine; ++b) {
        auto [x, y] = batch_of(7, r, b);
        if (b == 1) {
          // A micro-step under no_sync, then the synced one: the joined rank shadows both.
          auto guard = model->no_sync();
          torch::nn::functional::cross_entropy(model(x), y).backward();
        }
        torch::nn::functional::cross_entropy(model(x), y).backward();
        opt.step();
        opt.zero_grad();
      }
    } // joins here
    for (const auto& p : net->named_parameters()) {
      CAPTURE(p.key());
      CHECK(ddp::test::identical_across_ranks(p.value()));
    }
    for (const auto& b : net->named_buffers()) {
      CAPTURE(b.key());
      CHECK(ddp::test::identical_across_ranks(b.value()));
    }
    // Training goes on after the Join, on every rank.
    auto [x, y] = batch_of(8, r, 0);
    torch::nn::functional::cross_entropy(model(x), y).backward();
    for (const auto& p : net->parameters()) CHECK(ddp::test::identical_across_ranks(p.grad()));
  }
}

TEST_CASE("Join: throw_on_early_termination raises on every rank at the same step", "[join]") {
  auto pg = ddp::test::world_ptr();
  const int n = pg->size();
  const int r = pg->rank();
  torch::manual_seed(5);
  ddp::test::Mlp local;
  ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
  ddp::JoinOptions options;
  options.throw_on_early_termination(true);
  const int mine = r == 1 ? 2 : 4;
  std::string error;
  int error_step = -1;
  {
    ddp::Join join(model, options);
    try {
      for (int b = 0; b < mine; ++b) {
        error_step = b;
        auto [x, y] = batch_of(3, r, b);
        torch::nn::functional::cross_entropy(model(x), y).backward();
      }
      error_step = mine;
      join.join();
    } catch (const ddp::ReductionError& e) {
      error = e.what();
    }
  }
  CAPTURE(error);
  CHECK(error_step == 2); // the first step rank 1 has no batch for, on every rank
  CHECK_THAT(error, Contains("[ddp rank " + std::to_string(r) + "]") && Contains("ran out of inputs") &&
                        Contains("throw_on_early_termination"));
  if (r != 1) CHECK_THAT(error, Contains("rank(s) 1 ran out"));
  // Nothing is left half done: a normal step works on every rank.
  auto [x, y] = batch_of(4, r, 0);
  torch::nn::functional::cross_entropy(model(x), y).backward();
  for (const auto& p : local->parameters()) CHECK(ddp::test::identical_across_ranks(p.grad()));
  (void)n;
}

TEST_CASE("Join on some ranks only: every rank names the mismatch instead of hanging", "[join]") {
  auto pg = ddp::test::world_ptr();
  const int r = pg->rank();
  torch::manual_seed(6);
  ddp::test::Mlp local;
  ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
  std::string error;
  {
    std::unique_ptr<ddp::Join<ddp::test::MlpImpl>> join;
    if (r == 1) join = std::make_unique<ddp::Join<ddp::test::MlpImpl>>(model);
    try {
      auto [x, y] = batch_of(9, r, 0);
      torch::nn::functional::cross_entropy(model(x), y).backward();
    } catch (const ddp::ReductionError& e) {
      error = e.what();
    }
  }
  CAPTURE(error);
  CHECK_THAT(error, Contains("out of step") && Contains("ddp::Join"));
}
