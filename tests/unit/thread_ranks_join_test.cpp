// ddp::Join (tests/mpi/join_test.cpp) and a communication hook that throws on one rank
// (tests/mpi/comm_hook_test.cpp), with the ranks as threads of this process at world 2, 3
// and 4. LibTorch's default generator is shared by the threads, so every value a check
// depends on comes from its own seeded generator or is made on the main thread.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <fmt/format.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <ddp/ddp.h>
#include <ddp/hooks.h>
#include <ddp/join.h>

#include "misuse_fixtures.h"
#include "models.h"
#include "rank_results.h"
#include "thread_ranks.h"
#include "world.h"

using Catch::Contains;
using ddp::test::require_values;
using ddp::test::run_ranks;
using PG = std::shared_ptr<ddp::ProcessGroup>;

using ddp::test::FailingHook;

namespace {

constexpr int kBatches = 6;
constexpr int64_t kRows = 4; // samples per batch and rank

at::Generator generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

// Rank q's batch b of an epoch, the same on every thread (the oracle replays them).
std::pair<torch::Tensor, torch::Tensor> batch_of(int epoch, int q, int b) {
  auto gen = generator(1000 * epoch + 50 * q + b);
  torch::Tensor x = torch::randn({kRows, 8}, gen);
  torch::Tensor y = torch::randint(4, {kRows}, gen, torch::kLong);
  return {x, y};
}

int batches_of(int q, int world, int fewer) { return q == world - 1 ? kBatches - fewer : kBatches; }

// A model with `initial`'s parameters (made on the main thread, read-only here).
ddp::test::Mlp copy_of(const ddp::test::Mlp& initial) {
  ddp::test::Mlp m;
  torch::NoGradGuard no_grad;
  auto mine = m->named_parameters();
  for (const auto& p : initial->named_parameters()) mine[p.key()].copy_(p.value());
  return m;
}

// What one rank measured against the oracle: the worst error over the compared values as
// a fraction of its tolerance (<= 1 passes), and whether the ranks agreed bit for bit.
struct OracleSeen {
  double worst_gradient = 0;  // max over steps and parameters of error / tolerance
  double worst_parameter = 0; // after each epoch
  bool identical = true;      // parameters and step counts after each epoch
  int compared = 0;           // gradient comparisons made (a check that ran)
};

} // namespace

TEST_CASE("thread ranks: Join with uneven inputs trains like one process on the batches processed",
          "[threads][join]") {
  struct Case {
    int world;
    int fewer;
    bool divide_by_world;
  };
  for (const Case c : {Case{2, 1, true}, Case{2, 5, false}, Case{3, 0, true}, Case{3, 5, true}, Case{3, 1, false},
                       Case{4, 1, true}, Case{4, 5, false}}) {
    CAPTURE(c.world, c.fewer, c.divide_by_world);
    torch::manual_seed(21);
    const ddp::test::Mlp initial; // main thread: the default generator is not shared yet
    const int n = c.world;
    auto results = run_ranks(n, [&](int r, PG pg) {
      OracleSeen seen;
      ddp::test::Mlp oracle = copy_of(initial);
      ddp::test::Mlp local = copy_of(initial);
      ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
      torch::optim::SGD opt(local->parameters(), 0.1);
      torch::optim::SGD oracle_opt(oracle->parameters(), 0.1);
      int iteration = 0;
      // Two epochs, each under its own Join: the second starts from the state the first left.
      for (int epoch = 0; epoch < 2; ++epoch) {
        {
          ddp::JoinOptions options;
          options.divide_by_initial_world_size(c.divide_by_world);
          ddp::Join join(model, options);
          for (int b = 0; b < kBatches; ++b) {
            // The oracle takes this step on the batches of the ranks that still have one.
            std::vector<int> active;
            for (int q = 0; q < n; ++q) {
              if (b < batches_of(q, n, c.fewer)) active.push_back(q);
            }
            const double divisor = c.divide_by_world ? n : static_cast<double>(active.size());
            oracle_opt.zero_grad();
            for (int q : active) {
              auto [x, y] = batch_of(epoch, q, b);
              (torch::nn::functional::cross_entropy(oracle->forward(x), y) / divisor).backward();
            }
            if (b < batches_of(r, n, c.fewer)) {
              auto [x, y] = batch_of(epoch, r, b);
              opt.zero_grad();
              torch::nn::functional::cross_entropy(model(x), y).backward();
              const double tolerance = ddp::test::reduction_tolerance(
                  at::kFloat, ddp::test::gradient_terms_at(ddp::test::MlpImpl::reduction_terms(kRows * n), iteration));
              auto got = ddp::test::gradients_of(*local);
              auto want = ddp::test::gradients_of(*oracle);
              for (size_t i = 0; i < got.size(); ++i) {
                seen.worst_gradient = std::max(
                    seen.worst_gradient, ddp::test::max_relative_error(got[i].second, want[i].second) / tolerance);
                seen.compared += 1;
              }
              opt.step();
            }
            oracle_opt.step();
            iteration += 1;
          }
          join.join();
        }
        // Every rank leaves the Join with the same parameters, equal to the oracle's, and
        // the same step count.
        const double tolerance = ddp::test::reduction_tolerance(
            at::kFloat, ddp::test::parameter_terms_after(ddp::test::MlpImpl::reduction_terms(kRows * n), iteration - 1));
        for (const auto& p : local->named_parameters()) {
          seen.identical = seen.identical && ddp::test::identical_across_ranks(p.value());
          seen.worst_parameter = std::max(
              seen.worst_parameter,
              ddp::test::max_relative_error(p.value(), oracle->named_parameters()[p.key()]) / tolerance);
        }
        seen.identical =
            seen.identical && ddp::test::identical_across_ranks(torch::tensor(model->reducer().stats().iterations));
      }
      return seen;
    });
    require_values(results);
    for (const auto& r : results) {
      CAPTURE(r.rank, r.value->worst_gradient, r.value->worst_parameter);
      CHECK(r.value->compared == 6 * 2 * batches_of(r.rank, n, c.fewer)); // 6 parameters, 2 epochs
      CHECK(r.value->worst_gradient <= 1.0);
      CHECK(r.value->worst_parameter <= 1.0);
      CHECK(r.value->identical);
    }
  }
}

TEST_CASE("thread ranks: Join on some ranks only: every rank names the mismatch instead of hanging",
          "[threads][join]") {
  for (int n : {2, 3, 4}) {
    CAPTURE(n);
    auto results = run_ranks(n, [](int r, PG pg) {
      ddp::test::Mlp local;
      ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
      std::string error = "no error";
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
      return error;
    });
    require_values(results);
    for (const auto& r : results) {
      CAPTURE(r.rank);
      CHECK_THAT(*r.value, Contains("out of step") && Contains("ddp::Join"));
    }
  }
}

TEST_CASE("thread ranks: Join with throw_on_early_termination raises on every rank at the same step",
          "[threads][join]") {
  struct Seen {
    std::string error;
    int step = -1;
    bool recovered = false;
  };
  for (int n : {2, 3, 4}) {
    CAPTURE(n);
    auto results = run_ranks(n, [](int r, PG pg) {
      Seen seen;
      ddp::test::Mlp local;
      ddp::DistributedDataParallel model(local, pg, ddp::test::test_options());
      ddp::JoinOptions options;
      options.throw_on_early_termination(true);
      const int mine = r == 1 ? 2 : 4;
      {
        ddp::Join join(model, options);
        try {
          for (int b = 0; b < mine; ++b) {
            seen.step = b;
            auto [x, y] = batch_of(3, r, b);
            torch::nn::functional::cross_entropy(model(x), y).backward();
          }
          seen.step = mine;
          join.join();
        } catch (const ddp::ReductionError& e) {
          seen.error = e.what();
        }
      }
      // Nothing is left half done: a normal step works on every rank.
      auto [x, y] = batch_of(4, r, 0);
      torch::nn::functional::cross_entropy(model(x), y).backward();
      seen.recovered = true;
      for (const auto& p : local->parameters()) seen.recovered = seen.recovered && ddp::test::identical_across_ranks(p.grad());
      return seen;
    });
    require_values(results);
    for (const auto& r : results) {
      CAPTURE(r.rank, r.value->error);
      CHECK(r.value->step == 2); // the first step rank 1 has no batch for, on every rank
      CHECK_THAT(r.value->error, Contains(fmt::format("[ddp rank {}]", r.rank)) && Contains("ran out of inputs") &&
                                     Contains("throw_on_early_termination"));
      if (r.rank != 1) CHECK_THAT(r.value->error, Contains("rank(s) 1 ran out"));
      CHECK(r.value->recovered);
    }
  }
}

namespace {

// Three parameters (comm_hook_test.cpp's), from their own generator.
ddp::Reducer::NamedParameters hook_params() {
  auto gen = generator(3);
  return {{"w", torch::randn({48, 40}, gen).requires_grad_()},
          {"b", torch::randn({40}, gen).requires_grad_()},
          {"small", torch::randn({3, 2}, gen).requires_grad_()}};
}

// Rank r's gradient of parameter k in iteration `it`: every rank can compute every rank's.
torch::Tensor known_gradient(const torch::Tensor& p, size_t k, int rank, int it) {
  return torch::randn(p.sizes(), generator(100000 + 1000 * it + 10 * static_cast<int64_t>(k) + rank));
}

std::vector<torch::Tensor> gradients_for(const std::vector<torch::Tensor>& params, int rank, int it) {
  std::vector<torch::Tensor> out;
  for (size_t k = 0; k < params.size(); ++k) out.push_back(known_gradient(params[k], k, rank, it));
  return out;
}

// One synchronised step whose gradients are exactly `grads` (loss = sum <p, g>).
void step(ddp::Reducer& reducer, const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads) {
  for (const auto& p : params) p.mutable_grad() = torch::Tensor();
  reducer.prepare_for_forward();
  torch::Tensor loss = torch::zeros({});
  for (size_t k = 0; k < params.size(); ++k) loss = loss + (params[k] * grads[k]).sum();
  reducer.prepare_for_backward({loss});
  loss.backward();
}


} // namespace

TEST_CASE("thread ranks: a hook that throws is a ReductionError on every rank naming the hook and the bucket",
          "[threads][hooks]") {
  struct Case {
    const char* name;
    bool every_rank;
    bool in_continuation;
  };
  struct Seen {
    std::string message;
    double next_step_error = 1e300; // relative error of the next step's average
  };
  for (int n : {2, 3, 4}) {
    for (const Case c : {Case{"every rank, in run()", true, false}, Case{"every rank, in its continuation", true, true},
                         Case{"the last rank only, in run()", false, false},
                         Case{"the last rank only, in its continuation", false, true}}) {
      CAPTURE(n, c.name);
      std::set<int> ranks;
      for (int r = 0; r < n; ++r) {
        if (c.every_rank || r == n - 1) ranks.insert(r);
      }
      auto results = run_ranks(n, [&](int r, PG pg) {
        Seen seen;
        auto named = hook_params();
        std::vector<torch::Tensor> tensors;
        for (const auto& [name, p] : named) tensors.push_back(p);
        ddp::Options o = ddp::test::test_options();
        o.step_check(ddp::Options::StepCheck::kStrict); // the recovery asserted below is strict mode's
        o.first_bucket_cap_mb(1e-5);                    // one parameter per bucket
        o.bucket_cap_mb(1e-5);
        ddp::Reducer reducer(named, pg, o);
        reducer.register_comm_hook(std::make_shared<FailingHook>(ranks, /*iteration=*/1, /*bucket=*/1,
                                                                 c.in_continuation));
        step(reducer, tensors, gradients_for(tensors, r, 0));
        try {
          step(reducer, tensors, gradients_for(tensors, r, 1));
        } catch (const ddp::ReductionError& e) {
          seen.message = e.what();
        }
        // The ranks are still in step, and the next step is averaged as usual.
        step(reducer, tensors, gradients_for(tensors, r, 2));
        torch::Tensor exact = torch::zeros(tensors[0].sizes(), torch::kDouble);
        for (int q = 0; q < n; ++q) exact += known_gradient(tensors[0], 0, q, 2).to(torch::kDouble) / n;
        seen.next_step_error = ddp::test::max_relative_error(tensors[0].grad(), exact);
        return seen;
      });
      require_values(results);
      for (const auto& r : results) {
        CAPTURE(r.rank, r.value->message);
        CHECK_THAT(r.value->message, Contains("'failing'") && Contains("bucket 1"));
        if (ranks.count(r.rank)) {
          CHECK_THAT(r.value->message, Contains("injected failure"));
        } else {
          CHECK_THAT(r.value->message, Contains(fmt::format("rank {}'s communication hook", n - 1)));
        }
        CHECK(r.value->next_step_error <= ddp::test::reduction_tolerance(torch::kFloat, n + 1));
      }
    }
  }
}
