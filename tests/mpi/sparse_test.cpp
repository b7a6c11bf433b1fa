// Sparse gradients across processes (mpirun, and PyTorch's gloo through the gloo entries):
// the recommendation model of tests/support/sparse_model.h, its item embedding unused on
// rank 1 in odd steps and the spare one on every rank, with and without
// find_unused_parameters and no_sync, against single-process autograd on every rank's
// batch. The thread-rank cases (tests/unit/thread_ranks_sparse_test.cpp) cover Join, the
// hook and the errors.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <ddp/ddp.h>

#include "sparse_model.h"
#include "world.h"

using ddp::test::Recommender;
using ddp::test::RecommenderImpl;

TEST_CASE("sparse embeddings and a dense MLP train like one process on every rank's batch", "[sparse]") {
  constexpr int64_t kRows = 6;
  auto pg = ddp::test::world_ptr();
  const int world = pg->size();
  const int rank = pg->rank();
  for (bool find_unused : {false, true}) {
    CAPTURE(find_unused);
    torch::manual_seed(11);
    const Recommender initial;
    ddp::test::SparseSeen seen;
    Recommender oracle = ddp::test::copy_of(initial);
    Recommender local = ddp::test::copy_of(initial);
    ddp::DistributedDataParallel model(local, pg, ddp::test::test_options().find_unused_parameters(find_unused));
    torch::optim::SGD opt(local->parameters(), 0.1);
    torch::optim::SGD oracle_opt(oracle->parameters(), 0.1);
    auto uses_items = [](int q, int step) { return !(q == 1 && step % 2 == 1); };
    int compared_expected = 0;
    for (int step = 0; step < 4; ++step) {
      const int micro = step == 2 ? 2 : 1; // step 2: one micro-step under no_sync() first
      opt.zero_grad();
      oracle_opt.zero_grad();
      for (int m = 0; m < micro; ++m) {
        for (int q = 0; q < world; ++q) {
          const auto b = ddp::test::rec_batch(q, 10 * step + m, kRows);
          (torch::nn::functional::cross_entropy(oracle->forward(b.users, b.items, uses_items(q, step)), b.labels) /
           world)
              .backward();
        }
      }
      for (int m = 0; m < micro; ++m) {
        const auto b = ddp::test::rec_batch(rank, 10 * step + m, kRows);
        auto loss = [&] {
          return torch::nn::functional::cross_entropy(model(b.users, b.items, uses_items(rank, step)), b.labels);
        };
        if (m + 1 < micro) {
          auto guard = model->no_sync();
          loss().backward();
        } else {
          loss().backward();
        }
      }
      const double tolerance = ddp::test::reduction_tolerance(
          at::kFloat, ddp::test::gradient_terms_at(RecommenderImpl::reduction_terms(micro * kRows * world), step));
      ddp::test::compare_with_oracle(*local, *oracle, tolerance, seen);
      compared_expected += 6;
      opt.step();
      oracle_opt.step();
    }
    CHECK(seen.worst <= 1.0);
    CHECK(seen.sparse_layout);
    CHECK(seen.undefined_alike);
    CHECK(seen.identical);
    CHECK(seen.compared == compared_expected);
    CHECK_FALSE(local->spare->weight.grad().defined());
    CHECK(model->reducer().stats().sparse_bytes_per_iteration > 0);
  }
}
