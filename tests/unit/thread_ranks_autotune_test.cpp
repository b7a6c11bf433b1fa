// Options::bucket_cap_autotune with the ranks as threads at world 2 and 3. What each rank
// "measured" is injected through BucketCapAutotuner's timing seam, with every rank
// preferring a different candidate on its own, so that nothing here depends on timing
// and the choice can only be rank 0's min-over-candidates of the slowest rank's median.
// Checked: the schedule (which layout each iteration runs with, when the choice is
// made), that every rank ends with the same buckets as a run with the chosen cap fixed,
// that the gradients are each rank's planted gradient averaged over the ranks through
// every rebuild (tests/support/planted.h: the expected average is computed here from the
// planted values, not by the reducer), the options it composes with, and the ones it
// refuses. The pure parts (schedule, decide) are tested with crafted values.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <ddp/ddp.h>
#include <ddp/hooks.h>
#include <ddp/join.h>

#include "planted.h"
#include "rank_results.h"
#include "reducer/bucket_cap_autotuner.h"
#include "thread_ranks.h"
#include "world.h"

using Catch::Matchers::Contains;
using ddp::detail::BucketCapAutotuner;
using ddp::test::require_values;
using ddp::test::run_ranks;
using PG = std::shared_ptr<ddp::ProcessGroup>;
using Layout = std::vector<std::vector<std::string>>;

namespace {

// Three caps that lay the planted parameters out differently with first_bucket_cap_mb
// 0.001 and in_place_min_mb 0 (4, 3 and 2 buckets), one warm-up and two timed iterations
// each: candidate k runs iterations 1 + 3k .. 3 + 3k; the choice is made at the end of
// iteration 9 and used from iteration 10 on.
const std::vector<double> kCandidates{0.001, 0.1, 2.0};
constexpr int64_t kWarmup = 1;
constexpr int64_t kTimed = 2;
constexpr int kIterations = 12;
constexpr int64_t kDecision = 9;

ddp::Options base_options() {
  return ddp::test::test_options().in_place_min_mb(0).first_bucket_cap_mb(0.001);
}

ddp::Options autotune_options(ddp::Options o = base_options()) {
  return o.bucket_cap_autotune(
      ddp::BucketCapAutotune().candidates_mb(kCandidates).warmup_iterations(kWarmup).iterations_per_candidate(kTimed));
}

// What each rank "measures" per candidate, in microseconds: rank 0 alone would pick
// candidate 0, rank 1 candidate 1, rank 2 candidate 0; the slowest rank's medians are
// {900, 500, 400} at world 2 and {900, 600, 400} at world 3, so the choice is candidate 2,
// which no rank prefers on its own.
const std::vector<std::vector<int64_t>> kInjectedUs{{100, 500, 350}, {900, 200, 400}, {150, 600, 390}};
constexpr size_t kChosen = 2;

size_t candidate_of(double cap_mb) {
  return static_cast<size_t>(std::find(kCandidates.begin(), kCandidates.end(), cap_mb) - kCandidates.begin());
}

// Installs the injected timings for its lifetime, counting the timed backward passes
// per rank.
class InjectedTimings {
 public:
  InjectedTimings() {
    for (auto& c : calls_) c = 0;
    BucketCapAutotuner::set_timing_override([this](int rank, int64_t iteration, double cap_mb) -> std::optional<int64_t> {
      calls_[static_cast<size_t>(rank)] += 1;
      // A jitter that changes no median's order: the medians are what rank 0 compares.
      return kInjectedUs[static_cast<size_t>(rank)][candidate_of(cap_mb)] * 1000 + iteration % 3;
    });
  }
  ~InjectedTimings() { BucketCapAutotuner::set_timing_override(nullptr); }
  int calls(int rank) const { return calls_[static_cast<size_t>(rank)]; }

 private:
  std::atomic<int> calls_[3];
};

// Per element: |got - want| <= n * 2^-22 * (sum_r |x_r|) / n bounds the error of any
// order of float adds of n terms and the division (round-off u = 2^-24 per operation).
double error_ratio(const torch::Tensor& got, int n, int it, size_t i) {
  const ddp::test::ExactMean exact = ddp::test::exact_mean(n, it, i);
  const torch::Tensor bound = exact.size * (static_cast<double>(n) * std::ldexp(1.0, -22)) + 1e-300;
  return ((got.to(torch::kDouble) - exact.mean).abs() / bound).max().item<double>();
}

struct Seen {
  std::vector<Layout> layouts; // the layout each iteration ran with (read after its backward)
  std::vector<Layout> fixed;   // per candidate: a run with it as a fixed bucket_cap_mb, after the rebuild
  double chosen_mb = 0;
  int64_t chosen_after = -1;     // stats().autotune_iterations
  int64_t chosen_at = -1;        // the first iteration after whose backward the choice was known
  int64_t rebuilds = 0;
  int64_t buckets = 0;
  double worst_error_ratio = 0;
  int64_t reproducible_differing = 0; // Options::reproducible: elements off the rank-order sum
  bool identical = true;              // every rank's .grad bit-identical, every step
  std::vector<ddp::Timeline::Event> autotune_events;
};

// Trains kIterations planted steps with autotune on `options`, each synchronised step
// after `no_sync_steps` backward passes under no_sync() (their gradients accumulate).
Seen train(PG pg, const ddp::Options& options, int no_sync_steps = 0) {
  const int n = pg->size();
  const int q = pg->rank();
  Seen seen;
  {
    ddp::test::Planted model;
    ddp::DistributedDataParallel wrapped(model, pg, options);
    wrapped->reducer().set_timeline_enabled(true);
    for (int it = 0; it < kIterations; ++it) {
      model->zero_grad();
      // Planted steps of "iteration" 100 + s under no_sync: their gradients add to this
      // step's, and the average below includes them.
      for (int s = 0; s < no_sync_steps; ++s) {
        auto guard = wrapped->no_sync();
        wrapped(ddp::test::planted_grads(q, 100 + s)).backward();
      }
      wrapped(ddp::test::planted_grads(q, it)).backward();
      seen.layouts.push_back(wrapped->reducer().bucket_layout());
      if (seen.chosen_at < 0 && wrapped->reducer().stats().autotuned_bucket_cap_mb > 0) seen.chosen_at = it;
      for (size_t i = 0; i < model->params.size(); ++i) {
        const torch::Tensor grad = model->params[i].grad();
        if (no_sync_steps == 0) {
          seen.worst_error_ratio = std::max(seen.worst_error_ratio, error_ratio(grad, n, it, i));
        } else {
          // The sum of the steps' planted gradients, averaged: within the bound of a float
          // sum of (no_sync_steps + 1) n terms.
          torch::Tensor want = torch::zeros_like(grad, torch::kDouble);
          torch::Tensor size = torch::zeros_like(want);
          for (int r = 0; r < n; ++r) {
            for (int s = 0; s <= no_sync_steps; ++s) {
              const torch::Tensor x = ddp::test::planted_grad(r, s == no_sync_steps ? it : 100 + s, i).to(torch::kDouble);
              want += x / n;
              size += x.abs() / n;
            }
          }
          const double terms = static_cast<double>((no_sync_steps + 1) * n);
          const torch::Tensor bound = size * (terms * std::ldexp(1.0, -22)) + 1e-300;
          seen.worst_error_ratio = std::max(
              seen.worst_error_ratio, ((grad.to(torch::kDouble) - want).abs() / bound).max().item<double>());
        }
        if (options.reproducible() && no_sync_steps == 0) {
          std::vector<torch::Tensor> per_rank;
          for (int r = 0; r < n; ++r) per_rank.push_back(ddp::test::planted_grad(r, it, i));
          seen.reproducible_differing +=
              ddp::test::differing_bits(grad, ddp::test::rank_order_average(per_rank, at::kFloat, n));
        }
        seen.identical = seen.identical && ddp::test::identical_across_ranks(grad);
      }
    }
    const auto& stats = wrapped->reducer().stats();
    seen.chosen_mb = stats.autotuned_bucket_cap_mb;
    seen.chosen_after = stats.autotune_iterations;
    seen.rebuilds = stats.bucket_rebuilds;
    seen.buckets = stats.buckets;
    for (const auto& e : wrapped->reducer().timeline().events()) {
      if (e.kind == ddp::Timeline::Kind::kAutotuneCandidate || e.kind == ddp::Timeline::Kind::kAutotuneChoice) {
        seen.autotune_events.push_back(e);
      }
    }
  }
  // The same options without autotune, each candidate as the fixed cap: the layout after
  // the first iteration's rebuild is what autotune's rebuild with that cap must give.
  for (double cap : kCandidates) {
    ddp::Options fixed = options;
    fixed.bucket_cap_autotune(std::nullopt).bucket_cap_mb(cap);
    ddp::test::Planted model;
    ddp::DistributedDataParallel wrapped(model, pg, fixed);
    for (int it = 0; it < 2; ++it) {
      model->zero_grad();
      wrapped(ddp::test::planted_grads(q, it)).backward();
    }
    seen.fixed.push_back(wrapped->reducer().bucket_layout());
  }
  return seen;
}

// The candidate whose layout iteration `it` runs with (-1: the first iteration's).
int candidate_running(int64_t it) {
  if (it == 0) return -1;
  if (it > kDecision) return static_cast<int>(kChosen);
  return static_cast<int>((it - 1) / (kWarmup + kTimed));
}

void check_run(const std::vector<ddp::test::RankResult<Seen>>& results, int n, bool reproducible) {
  const Seen& rank0 = *results.front().value;
  // The three candidates really lay the buckets out differently (else the test shows nothing).
  REQUIRE(rank0.fixed.size() == 3);
  REQUIRE(rank0.fixed[0] != rank0.fixed[1]);
  REQUIRE(rank0.fixed[1] != rank0.fixed[2]);
  REQUIRE(rank0.fixed[0] != rank0.fixed[2]);
  for (const auto& r : results) {
    CAPTURE(r.rank);
    const Seen& s = *r.value;
    CHECK(s.chosen_mb == kCandidates[kChosen]);
    CHECK(s.chosen_after == kDecision + 1);
    CHECK(s.chosen_at == kDecision);
    // The first iteration's rebuild (with candidate 0), one per later candidate, one for the choice.
    CHECK(s.rebuilds == 4);
    REQUIRE(s.layouts.size() == static_cast<size_t>(kIterations));
    for (int64_t it = 1; it < kIterations; ++it) {
      CAPTURE(it);
      CHECK(s.layouts[static_cast<size_t>(it)] == s.fixed[static_cast<size_t>(candidate_running(it))]);
    }
    CHECK(s.buckets == static_cast<int64_t>(s.fixed[kChosen].size()));
    // Identical on every rank: layouts at every iteration, and the reference runs.
    CHECK(s.layouts == rank0.layouts);
    CHECK(s.fixed == rank0.fixed);
    CHECK(s.worst_error_ratio <= 1.0);
    CHECK(s.identical);
    if (reproducible) CHECK(s.reproducible_differing == 0);
    // The timeline: one span per candidate with the slowest rank's median, then the choice.
    REQUIRE(s.autotune_events.size() == kCandidates.size() + 1);
    for (size_t k = 0; k < kCandidates.size(); ++k) {
      const auto& e = s.autotune_events[k];
      CHECK(e.kind == ddp::Timeline::Kind::kAutotuneCandidate);
      CHECK(e.index == static_cast<int64_t>(k));
      CHECK(e.bytes == static_cast<int64_t>(kCandidates[k] * 1048576.0));
      int64_t slowest = 0;
      // The median of two timed iterations is the lower one: the jitter's smaller value.
      for (int q = 0; q < n; ++q) slowest = std::max(slowest, kInjectedUs[static_cast<size_t>(q)][k] * 1000);
      const int64_t first_timed = 1 + static_cast<int64_t>(k) * (kWarmup + kTimed) + kWarmup;
      CHECK(e.value == slowest + std::min(first_timed % 3, (first_timed + 1) % 3));
    }
    CHECK(s.autotune_events.back().kind == ddp::Timeline::Kind::kAutotuneChoice);
    CHECK(s.autotune_events.back().index == static_cast<int64_t>(kChosen));
  }
}

} // namespace

TEST_CASE("autotune schedule: candidates in turn, warm-up untimed, the choice after the last timed iteration",
          "[autotune]") {
  BucketCapAutotuner tuner(
      ddp::BucketCapAutotune().candidates_mb({1, 4, 16}).warmup_iterations(1).iterations_per_candidate(2));
  CHECK(tuner.tuning());
  CHECK(tuner.decision_iteration() == 9);
  // Candidate k's cap is set at the end of iteration 3k, for iterations 3k+1 .. 3k+3.
  CHECK(tuner.cap_after(0) == std::optional<double>(1));
  CHECK(tuner.cap_after(3) == std::optional<double>(4));
  CHECK(tuner.cap_after(6) == std::optional<double>(16));
  for (int64_t it : {1, 2, 4, 5, 7, 8, 9}) CHECK_FALSE(tuner.cap_after(it));
  // Timed: the last two of each candidate's three.
  CHECK_FALSE(tuner.timed_cap(0));
  CHECK_FALSE(tuner.timed_cap(1));
  CHECK(tuner.timed_cap(2) == std::optional<double>(1));
  CHECK(tuner.timed_cap(3) == std::optional<double>(1));
  CHECK_FALSE(tuner.timed_cap(4));
  CHECK(tuner.timed_cap(6) == std::optional<double>(4));
  CHECK(tuner.timed_cap(9) == std::optional<double>(16));
  CHECK_FALSE(tuner.timed_cap(10));
  CHECK_FALSE(tuner.decides_at(8));
  CHECK(tuner.decides_at(9));
  CHECK(tuner.decides_at(10)); // postponed by a failed step: still due
  const auto t = BucketCapAutotuner::Clock::now();
  for (int64_t it = 0; it < 10; ++it) tuner.record(it, t, t, 100 * it); // only the timed ones count
  CHECK(tuner.medians() == std::vector<int64_t>{200, 500, 800});
  tuner.settle(1);
  CHECK_FALSE(tuner.tuning());
  CHECK_FALSE(tuner.decides_at(10));
  CHECK_FALSE(tuner.cap_after(12));
  CHECK(tuner.chosen_mb() == 4);
  CHECK_FALSE(BucketCapAutotuner(std::nullopt).tuning());
}

TEST_CASE("autotune decide: the candidate whose slowest rank is fastest, the earlier one on a tie", "[autotune]") {
  // Rank 0 alone would take candidate 0, rank 1 candidate 1; their slowest are {9, 5, 4}.
  auto d = BucketCapAutotuner::decide({1, 5, 3, 9, 2, 4}, 2, 3);
  CHECK(d.candidate == 2);
  CHECK(d.slowest == std::vector<int64_t>{9, 5, 4});
  CHECK(BucketCapAutotuner::decide({7, 3, 3}, 1, 3).candidate == 1);
  CHECK(BucketCapAutotuner::decide({5}, 1, 1).candidate == 0);
}

TEST_CASE("thread ranks: autotune tries every candidate, rank 0's choice over every rank's timings wins, gradients "
          "stay the average",
          "[threads][autotune]") {
  struct Variant {
    std::string name;
    ddp::Options options;
  };
  const std::vector<Variant> variants{
      {"plain", autotune_options()},
      {"static_graph", autotune_options(base_options().static_graph(true))},
      {"find_unused_parameters", autotune_options(base_options().find_unused_parameters(true))},
      {"gradient_as_bucket_view", autotune_options(base_options().gradient_as_bucket_view(true))},
      {"reproducible", autotune_options(base_options().reproducible(true))},
      {"deferred step check", autotune_options(base_options().step_check(ddp::Options::StepCheck::kDeferred))},
      {"first_iteration_one_bucket", autotune_options(base_options().first_iteration_one_bucket(true))},
  };
  for (int n : {2, 3}) {
    for (const auto& v : variants) {
      CAPTURE(n, v.name);
      InjectedTimings timings;
      auto results = run_ranks(n, [&](int, PG pg) { return train(pg, v.options); });
      require_values(results);
      check_run(results, n, v.options.reproducible());
      // Each rank timed K candidates x kTimed iterations, no more.
      for (int r = 0; r < n; ++r) CHECK(timings.calls(r) == static_cast<int>(kCandidates.size() * kTimed));
    }
  }
}

TEST_CASE("thread ranks: autotune counts synchronised iterations only: no_sync() backward passes are not timed",
          "[threads][autotune]") {
  for (int n : {2, 3}) {
    CAPTURE(n);
    InjectedTimings timings;
    auto results = run_ranks(n, [&](int, PG pg) { return train(pg, autotune_options(), /*no_sync_steps=*/2); });
    require_values(results);
    check_run(results, n, false);
    for (int r = 0; r < n; ++r) CHECK(timings.calls(r) == static_cast<int>(kCandidates.size() * kTimed));
  }
}

TEST_CASE("thread ranks: autotune under ddp::Join: a rank that runs out of data while tuning shadows the choice",
          "[threads][autotune]") {
  InjectedTimings timings;
  // Rank 1 joins after 5 steps (during candidate 1); rank 0 goes on to 12, so the choice
  // (end of iteration 9) is made while rank 1 shadows: it must take part in it.
  auto results = run_ranks(2, [&](int r, PG pg) {
    ddp::test::Planted model;
    ddp::DistributedDataParallel wrapped(model, pg, autotune_options());
    {
      ddp::Join join(wrapped);
      const int mine = r == 1 ? 5 : kIterations;
      for (int it = 0; it < mine; ++it) {
        model->zero_grad();
        wrapped(ddp::test::planted_grads(r, it)).backward();
      }
      join.join();
    }
    const auto& stats = wrapped->reducer().stats();
    return std::make_pair(stats.autotuned_bucket_cap_mb, wrapped->reducer().bucket_layout());
  });
  require_values(results);
  for (const auto& r : results) {
    CAPTURE(r.rank);
    CHECK(r.value->first == kCandidates[kChosen]);
    CHECK(r.value->second == results.front().value->second);
  }
}

TEST_CASE("thread ranks: autotune is refused with bucket_cap_mb_list, bad settings and a communication hook, on "
          "every rank",
          "[threads][autotune]") {
  struct Case {
    std::string name;
    ddp::Options options;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases{
      {"with bucket_cap_mb_list", autotune_options().bucket_cap_mb_list({1, 4}),
       {"Options::bucket_cap_autotune and Options::bucket_cap_mb_list are both set"}},
      {"no candidates", base_options().bucket_cap_autotune(ddp::BucketCapAutotune().candidates_mb({})),
       {"Options::bucket_cap_autotune has no candidates_mb"}},
      {"a candidate of 0", base_options().bucket_cap_autotune(ddp::BucketCapAutotune().candidates_mb({1, 0})),
       {"Options::bucket_cap_autotune.candidates_mb[1] = 0 is invalid"}},
      {"no timed iteration",
       base_options().bucket_cap_autotune(ddp::BucketCapAutotune().iterations_per_candidate(0)),
       {"Options::bucket_cap_autotune.iterations_per_candidate = 0 is invalid"}},
      {"negative warm-up", base_options().bucket_cap_autotune(ddp::BucketCapAutotune().warmup_iterations(-1)),
       {"Options::bucket_cap_autotune.warmup_iterations = -1 is invalid"}},
  };
  for (int n : {2, 3}) {
    for (const auto& c : cases) {
      CAPTURE(n, c.name);
      auto results = run_ranks(n, [&](int, PG pg) {
        ddp::test::Planted model;
        try {
          ddp::DistributedDataParallel wrapped(model, pg, c.options);
        } catch (const ddp::InvalidArgumentError& e) {
          return std::string(e.what());
        } catch (const ddp::ModelMismatchError& e) {
          // Another rank's set-up error, named by the construction exchange.
          return std::string(e.what());
        }
        return std::string("no error");
      });
      require_values(results);
      for (const auto& r : results) {
        CAPTURE(r.rank);
        for (const auto& e : c.expect) CHECK_THAT(*r.value, Contains(e));
      }
    }
    // A communication hook: refused at registration, on every rank, before any collective.
    auto results = run_ranks(n, [&](int, PG pg) {
      ddp::test::Planted model;
      ddp::DistributedDataParallel wrapped(model, pg, autotune_options());
      try {
        wrapped->register_comm_hook(ddp::hooks::fp16_compress());
      } catch (const ddp::InvalidArgumentError& e) {
        return std::string(e.what());
      }
      return std::string("no error");
    });
    require_values(results);
    for (const auto& r : results) {
      CAPTURE(r.rank);
      CHECK_THAT(*r.value, Contains("Options::bucket_cap_autotune is set") && Contains("register_comm_hook('") &&
                               Contains("[ddp rank " + std::to_string(r.rank) + "]"));
    }
  }
}
