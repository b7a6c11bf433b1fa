// Options::reproducible with the ranks as threads at world 3 and 4 (the reducer on
// ThreadProcessGroup, whose allreduce_ordered is ProcessGroup's allgather fallback): every
// bucket layout, and Join's shadowed steps, give the offline rank-order sum bit for bit
// (tests/support/planted.h). The backends' own exchange is tests/mpi/reproducible_test.cpp.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <string>
#include <vector>

#include <ddp/ddp.h>

#include "planted.h"
#include "rank_results.h"
#include "thread_ranks.h"
#include "world.h"

using ddp::test::require_values;
using ddp::test::run_ranks;
using PG = std::shared_ptr<ddp::ProcessGroup>;

namespace {

struct LayoutCount {
  std::string layout;
  int64_t differing;
};

} // namespace

TEST_CASE("reproducible on threads: every layout gives the rank-order sum at world 3 and 4",
          "[threads][reproducible]") {
  for (int n : {3, 4}) {
    CAPTURE(n);
    for (const auto& base : {ddp::test::test_options().reproducible(true),
                             ddp::test::test_options().wire_dtype(at::kBFloat16).wire_dtype_overrides(
                                 {{"*.bias", at::kFloat}})}) {
      auto results = run_ranks(n, [&](int, PG pg) {
        std::vector<LayoutCount> counts;
        for (const auto& o : ddp::test::run_planted(pg, base)) counts.push_back({o.layout, o.differing});
        return counts;
      });
      require_values(results);
      for (const auto& r : results) {
        for (const auto& c : *r.value) {
          CAPTURE(r.rank, c.layout);
          CHECK(c.differing == 0);
        }
      }
    }
  }
}

TEST_CASE("reproducible on threads: Join's shadowed steps sum the active ranks in rank order",
          "[threads][reproducible]") {
  constexpr int kSteps = 3;
  for (int n : {3, 4}) {
    for (int joined : {1, n - 1}) {     // the rank that runs out of data one step early
      for (bool divide_by_world : {true, false}) {
        CAPTURE(n, joined, divide_by_world);
        auto results =
            run_ranks(n, [&](int, PG pg) { return ddp::test::run_planted_join(pg, joined, divide_by_world, kSteps); });
        require_values(results);
        for (const auto& r : results) {
          CAPTURE(r.rank);
          CHECK(r.value->first == 0);
          CHECK(r.value->second == static_cast<int64_t>(ddp::test::planted_sizes().size()) *
                                       (r.rank == joined ? kSteps - 1 : kSteps));
        }
      }
    }
  }
}
