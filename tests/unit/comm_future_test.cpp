// ddp::CommFuture: a chain runs each continuation once, in order, when advanced or
// waited for; errors come out of wait(); a Work's failure is the future's.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <ddp/comm_future.h>
#include <ddp/error.h>

#include "comm/hooks/powersgd_hook.h"

TEST_CASE("CommFuture: continuations run once, in chain order, at advance or wait", "[unit][hooks]") {
  std::vector<std::string> log;
  auto start = ddp::CommFuture::ready(torch::ones({2}));
  auto chained = start->then([&log](const at::Tensor& v) {
                        log.push_back("first");
                        return ddp::CommFuture::ready(v * 2);
                      })
                     ->then_map([&log](const at::Tensor& v) {
                       log.push_back("second");
                       return v + 1;
                     });
  CHECK(log.empty()); // nothing runs until the reducer advances or waits
  chained->advance();
  CHECK(log == std::vector<std::string>{"first"}); // one step: the next collective is issued
  CHECK(torch::equal(chained->wait(), torch::full({2}, 3.0)));
  CHECK(log == std::vector<std::string>{"first", "second"});
  CHECK(torch::equal(chained->wait(), torch::full({2}, 3.0))); // waiting again runs nothing
  CHECK(log.size() == 2);
}

TEST_CASE("CommFuture: errors of a continuation and of the work come out of wait()", "[unit][hooks]") {
  auto failing = ddp::CommFuture::ready(torch::ones({1}))->then_map([](const at::Tensor&) -> at::Tensor {
    throw std::runtime_error("decompression failed");
  });
  CHECK_THROWS_WITH(failing->wait(), Catch::Contains("decompression failed"));

  // A continuation that failed is not run again by a second wait (it may issue collectives).
  int runs = 0;
  auto once = ddp::CommFuture::ready(torch::ones({1}))->then([&runs](const at::Tensor&) -> std::shared_ptr<ddp::CommFuture> {
    ++runs;
    throw std::runtime_error("the hook failed");
  });
  CHECK_THROWS_WITH(once->wait(), Catch::Contains("the hook failed"));
  CHECK_THROWS_WITH(once->wait(), Catch::Contains("the hook failed"));
  CHECK(runs == 1);

  auto work = std::make_shared<ddp::Work>("allreduce of 1 x Float", 1, 0);
  auto of_work = ddp::CommFuture::of(work, torch::ones({1}));
  work->finish(std::make_exception_ptr(ddp::CommError("the peer is gone")));
  CHECK_THROWS_AS(of_work->wait(), ddp::CommError);

  auto null_result = ddp::CommFuture::ready(torch::ones({1}))->then([](const at::Tensor&) {
    return std::shared_ptr<ddp::CommFuture>();
  });
  CHECK_THROWS_WITH(null_result->wait(), Catch::Contains("null future"));
  CHECK_THROWS_AS(ddp::CommFuture::of(nullptr, torch::ones({1})), ddp::InvalidArgumentError);
}

TEST_CASE("PowerSGD's Gram-Schmidt gives orthonormal columns", "[unit][hooks]") {
  torch::manual_seed(1);
  for (auto dtype : {torch::kFloat, torch::kDouble}) {
    at::Tensor m = torch::randn({50, 4}, dtype);
    ddp::hooks::PowerSGDHook::orthogonalize(m, 0.0);
    const at::Tensor gram = torch::matmul(m.t(), m);
    // A well-conditioned random matrix: a few hundred roundings at most.
    const double eps = dtype == torch::kFloat ? 1.19e-7 : 2.2e-16;
    CHECK((gram - torch::eye(4, dtype)).abs().max().item<double>() <= 400 * eps);
  }
  // An all-zero matrix stays finite with an epsilon (0 / 0 otherwise).
  at::Tensor zeros = torch::zeros({5, 2});
  ddp::hooks::PowerSGDHook::orthogonalize(zeros, 1e-8);
  CHECK(torch::isfinite(zeros).all().item<bool>());
}
