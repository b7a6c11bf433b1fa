// Sparse gradients (Embedding/EmbeddingBag with sparse(true)) mixed with dense ones, with
// the ranks as threads at world 2 and 3, against single-process autograd on every rank's
// batch: unused embeddings (on one rank, on every rank), find_unused_parameters, no_sync,
// Join, a communication hook, and the errors of a model built differently across ranks.
// The reduction's arithmetic (tests/mpi/sparse_test.cpp runs it under mpirun and gloo)
// is checked bit for bit against the rank-order formula.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <string>
#include <vector>

#include <ddp/ddp.h>
#include <ddp/hooks.h>
#include <ddp/join.h>

#include "comm/sparse_sum.h"
#include "rank_results.h"
#include "sparse_model.h"
#include "thread_ranks.h"
#include "throw_in_backward.h"
#include "world.h"

using Catch::Contains;
using ddp::test::Recommender;
using ddp::test::RecommenderImpl;
using ddp::test::require_values;
using ddp::test::run_ranks;
using ddp::test::SparseSeen;
using PG = std::shared_ptr<ddp::ProcessGroup>;

namespace {

constexpr int64_t kRows = 6; // samples per rank and batch
constexpr int kSteps = 3;

// The oracle's loss for rank q's batch, as that rank's share of the mean over the ranks.
void oracle_backward(Recommender& oracle, int q, int b, bool use_items, double divisor) {
  const auto batch = ddp::test::rec_batch(q, b, kRows);
  (torch::nn::functional::cross_entropy(oracle->forward(batch.users, batch.items, use_items), batch.labels) / divisor)
      .backward();
}

torch::Tensor local_loss(ddp::DistributedDataParallel<RecommenderImpl>& model, int q, int b, bool use_items) {
  const auto batch = ddp::test::rec_batch(q, b, kRows);
  return torch::nn::functional::cross_entropy(model(batch.users, batch.items, use_items), batch.labels);
}

double tolerance_at(int world, int iteration, int micro_steps = 1) {
  return ddp::test::reduction_tolerance(
      at::kFloat,
      ddp::test::gradient_terms_at(RecommenderImpl::reduction_terms(micro_steps * kRows * world), iteration));
}

void check_seen(const std::vector<ddp::test::RankResult<SparseSeen>>& results, int expected_compared) {
  require_values(results);
  for (const auto& r : results) {
    CAPTURE(r.rank, r.value->worst, r.value->compared);
    CHECK(r.value->worst <= 1.0);
    CHECK(r.value->sparse_layout);
    CHECK(r.value->undefined_alike);
    CHECK(r.value->identical);
    CHECK(r.value->compared == expected_compared);
  }
}

} // namespace

TEST_CASE("thread ranks: sparse embeddings and a dense MLP train like one process", "[threads][sparse]") {
  // items_unused: -1 every rank uses the item embedding, 1 rank 1 does not, -2 no rank does.
  for (int world : {2, 3}) {
    for (bool find_unused : {false, true}) {
      for (int items_unused : {-1, 1, -2}) {
        CAPTURE(world, find_unused, items_unused);
        torch::manual_seed(5);
        const Recommender initial; // main thread: the default generator is not shared yet
        auto uses_items = [&](int q) { return items_unused == -1 || (items_unused >= 0 && q != items_unused); };
        auto results = run_ranks(world, [&](int r, PG pg) {
          SparseSeen seen;
          Recommender oracle = ddp::test::copy_of(initial);
          Recommender local = ddp::test::copy_of(initial);
          ddp::DistributedDataParallel model(local, pg,
                                             ddp::test::test_options().find_unused_parameters(find_unused));
          torch::optim::SGD opt(local->parameters(), 0.1);
          torch::optim::SGD oracle_opt(oracle->parameters(), 0.1);
          for (int step = 0; step < kSteps; ++step) {
            opt.zero_grad();
            oracle_opt.zero_grad();
            for (int q = 0; q < world; ++q) oracle_backward(oracle, q, step, uses_items(q), world);
            local_loss(model, r, step, uses_items(r)).backward();
            ddp::test::compare_with_oracle(*local, *oracle, tolerance_at(world, step), seen);
            opt.step();
            oracle_opt.step();
          }
          // The unused embedding never got a gradient anywhere: untouched.
          seen.undefined_alike = seen.undefined_alike && !local->spare->weight.grad().defined();
          return seen;
        });
        // fc1, fc2 (weight, bias), user, and item where some rank used it, every step.
        check_seen(results, kSteps * (items_unused == -2 ? 5 : 6));
      }
    }
  }
}

TEST_CASE("thread ranks: sparse gradients accumulated under no_sync are reduced at the synchronised step",
          "[threads][sparse][nosync]") {
  for (int world : {2, 3}) {
    CAPTURE(world);
    torch::manual_seed(6);
    const Recommender initial;
    // Micro-step m on rank q uses the items except micro-step 2 (the synchronised one) on
    // rank 1: its item gradient comes from the no_sync() accumulation only.
    auto uses_items = [](int q, int m) { return !(m == 2 && q == 1); };
    auto results = run_ranks(world, [&](int r, PG pg) {
      SparseSeen seen;
      Recommender oracle = ddp::test::copy_of(initial);
      Recommender local = ddp::test::copy_of(initial);
      ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
      torch::optim::SGD opt(local->parameters(), 0.1);
      torch::optim::SGD oracle_opt(oracle->parameters(), 0.1);
      for (int step = 0; step < 2; ++step) {
        opt.zero_grad();
        oracle_opt.zero_grad();
        for (int m = 0; m < 3; ++m) {
          for (int q = 0; q < world; ++q) oracle_backward(oracle, q, 10 * step + m, uses_items(q, m), world);
        }
        {
          auto guard = model->no_sync();
          for (int m = 0; m < 2; ++m) local_loss(model, r, 10 * step + m, uses_items(r, m)).backward();
        }
        local_loss(model, r, 10 * step + 2, uses_items(r, 2)).backward();
        ddp::test::compare_with_oracle(*local, *oracle, tolerance_at(world, step, 3), seen);
        opt.step();
        oracle_opt.step();
      }
      return seen;
    });
    check_seen(results, 2 * 6);
  }
}

TEST_CASE("thread ranks: sparse gradients under Join with uneven inputs", "[threads][sparse][join]") {
  constexpr int kBatches = 4;
  for (int world : {2, 3}) {
    for (bool divide_by_world : {true, false}) {
      CAPTURE(world, divide_by_world);
      torch::manual_seed(7);
      const Recommender initial;
      // The last rank has two batches fewer.
      auto batches_of = [&](int q) { return q == world - 1 ? kBatches - 2 : kBatches; };
      auto results = run_ranks(world, [&](int r, PG pg) {
        SparseSeen seen;
        Recommender oracle = ddp::test::copy_of(initial);
        Recommender local = ddp::test::copy_of(initial);
        ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
        torch::optim::SGD opt(local->parameters(), 0.1);
        torch::optim::SGD oracle_opt(oracle->parameters(), 0.1);
        {
          ddp::JoinOptions options;
          options.divide_by_initial_world_size(divide_by_world);
          ddp::Join join(model, options);
          for (int b = 0; b < kBatches; ++b) {
            int active = 0;
            for (int q = 0; q < world; ++q) active += b < batches_of(q) ? 1 : 0;
            const double divisor = divide_by_world ? world : active;
            oracle_opt.zero_grad();
            for (int q = 0; q < world; ++q) {
              if (b < batches_of(q)) oracle_backward(oracle, q, b, /*use_items=*/true, divisor);
            }
            if (b < batches_of(r)) {
              opt.zero_grad();
              local_loss(model, r, b, /*use_items=*/true).backward();
              // Only the active ranks compare (identical_across_ranks is a collective of
              // the world): their gradients against the oracle's.
              const auto want = oracle->named_parameters();
              for (const auto& p : local->named_parameters()) {
                const torch::Tensor g = p.value().grad();
                const torch::Tensor w = want[p.key()].grad();
                if (!w.defined()) {
                  seen.undefined_alike = seen.undefined_alike && !g.defined();
                  continue;
                }
                if (!g.defined()) {
                  seen.undefined_alike = false;
                  continue;
                }
                if (p.key().rfind("fc", 0) != 0) seen.sparse_layout = seen.sparse_layout && g.is_sparse();
                seen.worst = std::max(seen.worst, ddp::test::max_relative_error(g.is_sparse() ? g.to_dense() : g,
                                                                                w.is_sparse() ? w.to_dense() : w) /
                                                      tolerance_at(world, b));
                seen.compared += 1;
              }
              opt.step();
            }
            oracle_opt.step();
          }
          join.join();
        }
        // Every rank leaves with the last active rank's parameters.
        for (const auto& p : local->named_parameters()) {
          seen.identical = seen.identical && ddp::test::identical_across_ranks(p.value());
        }
        return seen;
      });
      require_values(results);
      for (const auto& r : results) {
        CAPTURE(r.rank, r.value->worst);
        CHECK(r.value->worst <= 1.0);
        CHECK(r.value->sparse_layout);
        CHECK(r.value->undefined_alike);
        CHECK(r.value->identical);
        CHECK(r.value->compared == 6 * batches_of(r.rank));
      }
    }
  }
}

TEST_CASE("thread ranks: a communication hook reduces the dense buckets; sparse gradients bypass it",
          "[threads][sparse][hooks]") {
  for (int world : {2, 3}) {
    CAPTURE(world);
    torch::manual_seed(8);
    const Recommender initial;
    auto results = run_ranks(world, [&](int r, PG pg) {
      SparseSeen seen;
      Recommender oracle = ddp::test::copy_of(initial);
      Recommender local = ddp::test::copy_of(initial);
      ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
      model->register_comm_hook(ddp::hooks::allreduce());
      for (int step = 0; step < 2; ++step) {
        local->zero_grad();
        oracle->zero_grad();
        for (int q = 0; q < world; ++q) oracle_backward(oracle, q, step, q != 0, world);
        local_loss(model, r, step, r != 0).backward();
        ddp::test::compare_with_oracle(*local, *oracle, tolerance_at(world, 0), seen);
      }
      return seen;
    });
    check_seen(results, 2 * 6);
  }
}

TEST_CASE("thread ranks: an embedding sparse on one rank and dense on another is an error on every rank naming it",
          "[threads][sparse][misuse]") {
  for (int world : {2, 3}) {
    CAPTURE(world);
    auto results = run_ranks(world, [&](int r, PG pg) {
      Recommender local(/*sparse=*/r != 1);
      try {
        ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
      } catch (const ddp::ModelMismatchError& e) {
        return std::string(e.what());
      }
      return std::string("no error");
    });
    require_values(results);
    for (const auto& r : results) {
      CAPTURE(r.rank);
      CHECK_THAT(*r.value, Contains("user.weight") && Contains("sparse gradient"));
    }
  }
}

TEST_CASE("thread ranks: a gradient whose layout differs from the declared one is an error on every rank",
          "[threads][sparse][misuse]") {
  for (int world : {2, 3}) {
    CAPTURE(world);
    auto results = run_ranks(world, [&](int r, PG pg) {
      Recommender local;
      // fc1.weight declared sparse on every rank (the construction check compares it):
      // its gradient is dense, which every rank refuses at its hook.
      ddp::DistributedDataParallel model(local, pg, ddp::test::test_options().expect_sparse_gradients({"fc1.weight"}));
      std::string error = "no error";
      try {
        local_loss(model, r, 0, true).backward();
      } catch (const ddp::ReductionError& e) {
        error = e.what();
      }
      // The ranks are still in step: the next step is reduced, and the error repeats.
      std::string again = "no error";
      try {
        local->zero_grad();
        local_loss(model, r, 1, true).backward();
      } catch (const ddp::ReductionError& e) {
        again = e.what();
      }
      return error + " | " + again;
    });
    require_values(results);
    for (const auto& r : results) {
      CAPTURE(r.rank);
      CHECK_THAT(*r.value, Contains("fc1.weight") && Contains("declared sparse") && Contains("dense gradient"));
    }
  }
}

TEST_CASE("thread ranks: expect_sparse_gradients naming no trainable parameter is refused on every rank",
          "[threads][sparse][misuse]") {
  auto results = run_ranks(2, [&](int r, PG pg) {
    Recommender local;
    try {
      ddp::DistributedDataParallel model(local, pg,
                                         ddp::test::test_options().expect_sparse_gradients({"usr.weight"}));
    } catch (const ddp::InvalidArgumentError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  });
  require_values(results);
  for (const auto& r : results) {
    CAPTURE(r.rank);
    CHECK_THAT(*r.value, Contains("usr.weight") && Contains("expect_sparse_gradients"));
  }
}

TEST_CASE("SparseSum: the ranks' sparse tensors are added in rank order, the same bits on every rank",
          "[threads][sparse]") {
  // Rank q's tensor: rows drawn from 0..11 with repeats (uncoalesced), rank 1 empty;
  // the expected sum is the dense formula ((d_0 + d_1) + d_2) / n in float, where a row
  // missing on a rank adds an exact 0.
  auto local_of = [](int q) {
    auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(300 + q));
    const int64_t nnz = q == 1 ? 0 : 5 + 3 * q;
    torch::Tensor rows = torch::randint(12, {1, nnz}, gen, torch::kLong);
    torch::Tensor values = torch::randn({nnz, 3}, gen);
    return torch::sparse_coo_tensor(rows, values, {12, 3});
  };
  for (int world : {2, 3}) {
    CAPTURE(world);
    torch::Tensor expected = torch::zeros({12, 3});
    for (int q = 0; q < world; ++q) expected = expected + local_of(q).coalesce().to_dense();
    expected = expected / world;
    auto results = run_ranks(world, [&](int r, PG pg) {
      auto result = ddp::detail::SparseSum::run(*pg, {local_of(r)}, world, std::chrono::seconds(60));
      const torch::Tensor sum = result.sums.at(0);
      const bool identical = ddp::test::identical_across_ranks(sum.to_dense()); // a collective: on every rank
      return identical && sum.is_sparse() && sum.is_coalesced() && result.error.empty() &&
             torch::equal(sum.to_dense(), expected);
    });
    require_values(results);
    for (const auto& r : results) {
      CAPTURE(r.rank);
      CHECK(*r.value);
    }
  }
}

namespace {

// A sparse embedding, then a pass-through that throws from its backward where armed, then
// a Linear: the Linear's gradient is bucketed, the embedding's never arrives.
struct ThrowingRecImpl : torch::nn::Module {
  ThrowingRecImpl() {
    user = register_module("user", torch::nn::Embedding(torch::nn::EmbeddingOptions(20, 4).sparse(true)));
    fc = register_module("fc", torch::nn::Linear(4, 3));
  }
  torch::Tensor forward(torch::Tensor ids) { return fc(ddp::test::ThrowInBackward::apply(user(ids), armed)); }
  torch::nn::Embedding user{nullptr};
  torch::nn::Linear fc{nullptr};
  bool armed = false;
};
TORCH_MODULE(ThrowingRec);

} // namespace

TEST_CASE("thread ranks: a backward interrupted on one rank completes the sparse exchange; the next step is exact",
          "[threads][sparse][misuse]") {
  for (int world : {2, 3}) {
    CAPTURE(world);
    torch::manual_seed(9);
    const ThrowingRec initial;
    struct Seen {
      std::string first, second;
      double worst = 1e9;
    };
    auto results = run_ranks(world, [&](int r, PG pg) {
      Seen seen;
      ThrowingRec local;
      ThrowingRec oracle;
      {
        torch::NoGradGuard no_grad;
        for (auto* m : {&local, &oracle}) {
          auto mine = (*m)->named_parameters();
          for (const auto& p : initial->named_parameters()) mine[p.key()].copy_(p.value());
        }
      }
      ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
      auto ids_of = [](int q, int step) { return torch::tensor({q, q + 3, 7, step}, torch::kLong); };
      // Step 0: rank 1's backward throws between the Linear and the embedding.
      local->armed = r == 1;
      try {
        model(ids_of(r, 0)).sum().backward();
      } catch (const std::exception& e) {
        seen.first = e.what();
      }
      local->armed = false;
      // Step 1: rank 1's forward completes the interrupted section first (and says so).
      local->zero_grad();
      try {
        model(ids_of(r, 1)).sum().backward();
      } catch (const ddp::ReductionError& e) {
        seen.second = e.what();
        local->zero_grad();
        model(ids_of(r, 1)).sum().backward();
      }
      for (int q = 0; q < world; ++q) (oracle->forward(ids_of(q, 1)).sum() / world).backward();
      const auto want = oracle->named_parameters();
      seen.worst = 0;
      for (const auto& p : local->named_parameters()) {
        const torch::Tensor g = p.value().grad();
        const torch::Tensor w = want[p.key()].grad();
        const bool ok = g.defined() && (p.key() != "user.weight" || g.is_sparse());
        seen.worst = std::max(seen.worst, ok ? ddp::test::max_relative_error(g.is_sparse() ? g.to_dense() : g,
                                                                              w.is_sparse() ? w.to_dense() : w)
                                             : 1e9);
      }
      return seen;
    });
    require_values(results);
    for (const auto& r : results) {
      CAPTURE(r.rank, r.value->first, r.value->second);
      if (r.rank == 1) {
        CHECK_THAT(r.value->first, Contains("injected"));
        CHECK_THAT(r.value->second, Contains("did not finish"));
      } else {
        CHECK_THAT(r.value->first, Contains("not averaged"));
        CHECK(r.value->second.empty());
      }
      // Sums of 4 world terms and one division: a few roundings of float.
      CHECK(r.value->worst <= ddp::test::reduction_tolerance(at::kFloat, 4 * world + 8));
    }
  }
}
