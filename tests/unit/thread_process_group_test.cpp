// The thread-rank process group (tests/support/thread_process_group.h) and its runner:
// the collectives against closed-form values at world 1-4, issue order, the mismatch,
// timeout, abort and finished-peer errors, and each injected fault. The conformance
// cases of tests/support/process_group_conformance.h assert inside the rank (Catch2 2.x
// is not thread-safe), so their properties are restated here with the assertions on the
// main thread. Expected values are functions of rank and size, never the group's output.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include <ddp/ddp.h>

#include "thread_process_group.h"
#include "thread_ranks.h"
#include "world.h"

using Catch::Contains;
using ddp::test::Fault;
using ddp::test::run_ranks;
using ddp::test::ThreadWorld;
using PG = std::shared_ptr<ddp::ProcessGroup>;

namespace {

constexpr std::chrono::seconds kWait{20};      // a wait that must succeed
constexpr std::chrono::milliseconds kShort{300}; // a wait that must time out

// "" if every rank returned `true` without an exception, else what went wrong where.
template <class Results>
std::string failures_of(const Results& results) {
  std::string out;
  for (const auto& r : results) {
    if (!r.ok()) {
      out += fmt::format("rank {} threw {}: {}\n", r.rank, r.error_type, r.error);
    } else if (!r.value || !*r.value) {
      out += fmt::format("rank {} saw a wrong value\n", r.rank);
    }
  }
  return out;
}

} // namespace

TEST_CASE("thread ranks: allreduce sums every dtype the reducer uses, exactly", "[threads][pg]") {
  for (int n : {1, 2, 3, 4}) {
    CAPTURE(n);
    auto results = run_ranks(n, [n](int r, PG pg) {
      bool ok = pg->rank() == r && pg->size() == n;
      for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kLong, at::kByte, at::kInt}) {
        at::Tensor t = at::arange(10, at::kDouble).add(r).to(dtype);
        pg->allreduce(t)->wait(kWait);
        // sum over r of (i + r) = n*i + n(n-1)/2
        at::Tensor expected = at::arange(10, at::kDouble).mul(n).add(n * (n - 1) / 2.0);
        ok = ok && t.scalar_type() == dtype && at::equal(t.to(at::kDouble), expected);
      }
      return ok;
    });
    INFO(failures_of(results));
    CHECK(failures_of(results).empty());
  }
}

TEST_CASE("thread ranks: large allreduce, broadcast from every root, allgather in rank order", "[threads][pg]") {
  for (int n : {2, 3, 4}) {
    CAPTURE(n);
    auto results = run_ranks(n, [n](int r, PG pg) {
      bool ok = true;
      // Large, uneven: small integers, exact in every dtype.
      for (auto [dtype, numel] : {std::pair{at::kHalf, int64_t{120001}}, std::pair{at::kFloat, int64_t{300007}}}) {
        at::Tensor pattern = at::arange(numel, at::kLong).remainder(7).to(at::kDouble);
        at::Tensor t = pattern.add(r).to(dtype);
        pg->allreduce(t)->wait(kWait);
        ok = ok && at::equal(t.to(at::kDouble), pattern.mul(n).add(n * (n - 1) / 2.0));
      }
      for (int root = 0; root < n; ++root) {
        at::Tensor t = at::full({1000}, static_cast<float>(r * 10 + 1));
        pg->broadcast(t, root)->wait(kWait);
        ok = ok && at::equal(t, at::full({1000}, static_cast<float>(root * 10 + 1)));
      }
      at::Tensor in = at::full({3, 2}, static_cast<double>(r), at::kDouble);
      std::vector<at::Tensor> outs;
      for (int q = 0; q < n; ++q) outs.push_back(at::empty_like(in));
      pg->allgather(outs, in)->wait(kWait);
      for (int q = 0; q < n; ++q) ok = ok && at::equal(outs[q], at::full({3, 2}, double(q), at::kDouble));
      pg->barrier();
      return ok;
    });
    INFO(failures_of(results));
    CHECK(failures_of(results).empty());
  }
}

TEST_CASE("thread ranks: collectives complete in issue order; arguments are checked at the call", "[threads][pg]") {
  auto results = run_ranks(3, [](int r, PG pg) {
    std::vector<at::Tensor> tensors;
    std::vector<std::shared_ptr<ddp::Work>> works;
    bool ok = true;
    for (int i = 0; i < 20; ++i) {
      tensors.push_back(at::full({(i % 4 + 1) * 500}, float(i)));
      works.push_back(pg->allreduce(tensors.back()));
      ok = ok && works.back()->sequence() == static_cast<uint64_t>(i + 1);
      // The peers issue at their own pace: rank 2 lags behind.
      if (r == 2 && i % 5 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    works.back()->wait(kWait);
    for (int i = 0; i < 20; ++i) {
      ok = ok && works[i]->is_completed() && works[i]->end_time() <= works.back()->end_time() &&
           at::equal(tensors[i], at::full({(i % 4 + 1) * 500}, float(i) * 3));
    }
    at::Tensor in = at::zeros({2});
    std::vector<at::Tensor> outs(4, at::zeros({2}));
    try {
      pg->allgather(outs, in);
      ok = false;
    } catch (const ddp::InvalidArgumentError& e) {
      ok = ok && std::string(e.what()).find("one output per rank") != std::string::npos;
    }
    try {
      pg->allreduce(at::zeros({4, 4}).t());
      ok = false;
    } catch (const ddp::InvalidArgumentError& e) {
      ok = ok && std::string(e.what()).find("contiguous") != std::string::npos;
    }
    try {
      pg->broadcast(at::zeros({2}), 3);
      ok = false;
    } catch (const ddp::InvalidArgumentError&) {
    }
    pg->barrier();
    return ok;
  });
  INFO(failures_of(results));
  CHECK(failures_of(results).empty());
}

TEST_CASE("thread ranks: a float sum is in rank order, bit-identical on every rank", "[threads][pg]") {
  // Values whose float sum depends on the order: 1e8, 1, -1e8, 1 in rank order gives
  // ((1e8 + 1) - 1e8) + 1 = 1 in float (1e8 + 1 rounds to 1e8); other orders differ.
  const std::vector<float> values{1e8f, 1.0f, -1e8f, 1.0f};
  float expected = values[0];
  for (size_t r = 1; r < values.size(); ++r) expected += values[r];
  auto results = run_ranks(4, [&](int r, PG pg) {
    at::Tensor t = at::full({7}, values[r]);
    pg->allreduce(t)->wait(kWait);
    return t[0].item<float>();
  });
  REQUIRE(ddp::test::describe_errors({results.begin(), results.end()}).empty());
  for (const auto& r : results) {
    CAPTURE(r.rank);
    CHECK(*r.value == expected);
  }
}

TEST_CASE("thread ranks: matching calls that disagree fail on every rank, naming both calls", "[threads][pg]") {
  struct Case {
    const char* name;
    std::function<std::shared_ptr<ddp::Work>(int, ddp::ProcessGroup&)> call;
    std::string rank0, rank1;
  };
  const std::vector<Case> cases = {
      {"op", [](int r, ddp::ProcessGroup& pg) { return r == 1 ? pg.broadcast(at::zeros({4}), 0) : pg.allreduce(at::zeros({4})); },
       "allreduce of 4 x Float", "broadcast of 4 x Float (0.00 MiB) from root 0"},
      {"numel", [](int r, ddp::ProcessGroup& pg) { return pg.allreduce(at::zeros({r == 1 ? 5 : 4})); },
       "allreduce of 4 x Float", "allreduce of 5 x Float"},
      {"dtype", [](int r, ddp::ProcessGroup& pg) { return pg.allreduce(at::zeros({4}, r == 1 ? at::kDouble : at::kFloat)); },
       "allreduce of 4 x Float", "allreduce of 4 x Double"},
      {"root", [](int r, ddp::ProcessGroup& pg) { return pg.broadcast(at::zeros({4}), r == 1 ? 1 : 0); },
       "broadcast of 4 x Float (0.00 MiB) from root 0", "broadcast of 4 x Float (0.00 MiB) from root 1"},
  };
  for (const Case& c : cases) {
    for (int n : {2, 3}) {
      CAPTURE(c.name, n);
      auto results = run_ranks(n, [&](int r, PG pg) {
        try {
          c.call(r, *pg)->wait(kWait);
        } catch (const ddp::CommError& e) {
          return std::string(e.what());
        }
        return std::string("no error");
      });
      for (const auto& r : results) {
        CAPTURE(r.rank, r.error);
        REQUIRE(r.value);
        CHECK_THAT(*r.value, Contains(fmt::format("[ddp rank {}]", r.rank)) && Contains("does not match across ranks") &&
                                 Contains("rank 0 issued " + c.rank0) && Contains("rank 1 issued") &&
                                 Contains(c.rank1));
      }
    }
  }
}

TEST_CASE("thread ranks: a peer that never arrives is a TimeoutError; abort and a finished peer are CommErrors",
          "[threads][pg]") {
  // A rank that returns has finished (its group is destroyed, which fails the peers at
  // once): the silent peer stays alive, without issuing anything, until rank 0 is done.
  std::atomic<bool> rank0_done{false};
  auto stay_until_rank0_done = [&] {
    while (!rank0_done) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  };
  // Rank 0 sets the flag however its body ends.
  struct Release {
    std::atomic<bool>& flag;
    ~Release() { flag = true; }
  };
  SECTION("a peer that never issues the collective: wait(timeout) throws TimeoutError") {
    auto results = run_ranks(2, [&](int r, PG pg) {
      if (r == 1) {
        stay_until_rank0_done();
        return std::string("skipped");
      }
      Release release{rank0_done};
      std::string seen = "completed";
      try {
        pg->allreduce(at::ones({3}))->wait(kShort);
      } catch (const ddp::TimeoutError& e) {
        seen = e.what();
      }
      return seen;
    });
    CHECK_THAT(*results[0].value, Contains("rank 0") && Contains("collective #1 (allreduce of 3 x Float") &&
                                      Contains("did not complete within 300 ms"));
  }
  SECTION("barrier waits for every rank, and times out without one") {
    std::atomic<int> arrived{0};
    auto results = run_ranks(3, [&](int r, PG pg) {
      if (r == 2) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      arrived += 1;
      pg->barrier();
      return arrived.load();
    });
    for (const auto& r : results) {
      CAPTURE(r.rank, r.error);
      REQUIRE(r.value);
      CHECK(*r.value == 3);
    }
    auto lonely = run_ranks(2, [&](int r, PG pg) {
      if (r == 1) return stay_until_rank0_done();
      Release release{rank0_done};
      pg->set_timeout(kShort);
      pg->barrier();
    });
    CHECK(lonely[0].error_type == "ddp::TimeoutError");
    CHECK(lonely[1].ok());
  }
  SECTION("abort fails this rank's pending collectives and later calls with the reason") {
    auto results = run_ranks(2, [&](int r, PG pg) {
      if (r == 1) {
        stay_until_rank0_done();
        return std::string();
      }
      Release release{rank0_done};
      auto pending = pg->allreduce(at::ones({3}));
      pg->abort("the test gave up");
      std::string seen;
      for (auto work : {pending, pg->allreduce(at::ones({3}))}) {
        try {
          work->wait(kWait);
          seen += "completed;";
        } catch (const ddp::TimeoutError&) {
          seen += "timeout;";
        } catch (const ddp::CommError& e) {
          seen += std::string(e.what()) + ";";
        }
      }
      return seen;
    });
    CHECK_THAT(*results[0].value, Contains("rank 0 aborted its process group: the test gave up") &&
                                      !Contains("timeout;") && !Contains("completed;"));
  }
  SECTION("a rank whose group is destroyed: what it issued still pairs up, later calls fail fast") {
    for (int n : {2, 3, 4}) {
      CAPTURE(n);
      auto results = run_ranks(n, [n](int r, PG pg) {
        at::Tensor first = at::ones({2});
        auto w1 = pg->allreduce(first);
        if (r == 0) return std::string("left"); // issued #1 and never waited: finishes
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        w1->wait(kWait);
        if (!at::equal(first, at::full({2}, float(n)))) return std::string("wrong sum");
        try {
          pg->allreduce(at::ones({2}))->wait(kWait);
        } catch (const ddp::TimeoutError& e) {
          return "timeout: " + std::string(e.what());
        } catch (const ddp::CommError& e) {
          return std::string(e.what());
        }
        return std::string("completed");
      });
      for (int r = 1; r < n; ++r) {
        CAPTURE(r, results[r].error);
        REQUIRE(results[r].value);
        CHECK_THAT(*results[r].value, Contains(fmt::format("[ddp rank {}] collective #2", r)) &&
                                          Contains("cannot complete") &&
                                          Contains("rank 0's process group was destroyed"));
      }
    }
  }
}

TEST_CASE("thread ranks: injected delay, failure and drop", "[threads][pg]") {
  SECTION("a delayed collective completes late, with the right sum") {
    auto world = ThreadWorld::create(3);
    world->inject(Fault::delay_of(1, 2, std::chrono::milliseconds(200)));
    using Clock = std::chrono::steady_clock;
    struct Seen {
      bool sums = false;
      Clock::time_point issued, ended;
    };
    auto results = run_ranks(world, [](int r, PG pg) {
      at::Tensor a = at::ones({4}), b = at::full({4}, float(r));
      pg->allreduce(a)->wait(kWait);
      Seen seen;
      seen.issued = Clock::now();
      auto work = pg->allreduce(b);
      work->wait(kWait);
      seen.ended = work->end_time();
      seen.sums = at::equal(a, at::full({4}, 3.0f)) && at::equal(b, at::full({4}, 3.0f));
      return seen;
    });
    // Causality, not a speed threshold: rank 1's call reached the others no earlier than
    // 200 ms after it was made, and no rank's collective could finish before that.
    REQUIRE(ddp::test::describe_errors({results.begin(), results.end()}).empty());
    for (const auto& r : results) {
      CAPTURE(r.rank);
      CHECK(r.value->sums);
      CHECK(r.value->ended >= results[1].value->issued + std::chrono::milliseconds(200));
    }
  }
  SECTION("a failed collective: CommError on that rank only, its tensor untouched; the peers complete") {
    for (int n : {2, 3, 4}) {
      CAPTURE(n);
      auto world = ThreadWorld::create(n);
      world->inject(Fault::fail(n - 1, 2));
      auto results = run_ranks(world, [n](int r, PG pg) {
        at::Tensor a = at::ones({4}), b = at::ones({4}), c = at::ones({4});
        pg->allreduce(a)->wait(kWait);
        std::string error;
        try {
          pg->allreduce(b)->wait(kWait);
        } catch (const ddp::CommError& e) {
          error = e.what();
        }
        pg->allreduce(c)->wait(kWait); // in step afterwards
        const bool sums = at::equal(a, at::full({4}, float(n))) && at::equal(c, at::full({4}, float(n))) &&
                          at::equal(b, at::full({4}, r == n - 1 ? 1.0f : float(n)));
        return std::pair{error, sums};
      });
      for (const auto& r : results) {
        CAPTURE(r.rank, r.error);
        REQUIRE(r.value);
        CHECK(r.value->second);
        if (r.rank == n - 1) {
          CHECK_THAT(r.value->first, Contains(fmt::format("[ddp rank {}] collective #2", n - 1)) &&
                                         Contains("injected failure"));
        } else {
          CHECK(r.value->first.empty());
        }
      }
    }
  }
  SECTION("a dropped collective never reaches the peers: they time out, later ones do not overtake it") {
    auto world = ThreadWorld::create(3);
    world->inject(Fault::drop(2, 1));
    // Every rank stays until all have waited: a rank that returns has left, and the slots
    // it already joined (its second call) would then complete without it being waited for.
    std::atomic<int> waited{0};
    auto results = run_ranks(world, [&](int, PG pg) {
      auto first = pg->allreduce(at::ones({4}));
      auto second = pg->allreduce(at::ones({4}));
      std::string seen;
      for (auto& work : {first, second}) {
        try {
          work->wait(kShort);
          seen += "completed;";
        } catch (const ddp::TimeoutError&) {
          seen += "timeout;";
        }
      }
      waited += 1;
      while (waited < 3) std::this_thread::sleep_for(std::chrono::milliseconds(2));
      return seen;
    });
    for (const auto& r : results) {
      CAPTURE(r.rank, r.error);
      REQUIRE(r.value);
      CHECK(*r.value == "timeout;timeout;");
    }
  }
}

TEST_CASE("thread ranks: the runner reports each rank's exception, world() is the rank's own group", "[threads]") {
  auto results = run_ranks(3, [](int r, PG pg) {
    if (&ddp::test::world() != pg.get()) throw std::logic_error("world() is not this rank's group");
    const int64_t total = ddp::test::sum_over_ranks(r + 1);
    const bool same = ddp::test::identical_across_ranks(at::full({2}, 7.0));
    const bool differ = !ddp::test::identical_across_ranks(at::full({2}, double(r)));
    if (r == 1) throw ddp::ReductionError("rank 1 fails on purpose");
    return total == 6 && same && differ;
  });
  CHECK(results[0].ok());
  CHECK(results[0].value.value_or(false));
  CHECK(results[2].value.value_or(false));
  CHECK_FALSE(results[1].ok());
  CHECK(results[1].error_type == "ddp::ReductionError");
  CHECK(results[1].error == "rank 1 fails on purpose");
  CHECK_FALSE(results[1].value.has_value());
  CHECK_THROWS_AS(std::rethrow_exception(results[1].exception), ddp::ReductionError);
}

TEST_CASE("thread ranks: a rank that hangs past the run's timeout is aborted and reported", "[threads]") {
  ddp::test::RunOptions options;
  options.timeout = std::chrono::milliseconds(500);
  auto world = ThreadWorld::create(2);
  world->inject(Fault::drop(1, 1));
  auto results = run_ranks(
      world,
      [](int, PG pg) {
        // Rank 1's call is dropped; both wait without a timeout: only the runner's abort ends them.
        pg->allreduce(at::ones({1}))->wait();
      },
      options);
  for (const auto& r : results) {
    CAPTURE(r.rank);
    CHECK(r.error_type == "ddp::CommError");
    CHECK_THAT(r.error, Contains("thread-rank runner gave up"));
  }
}
