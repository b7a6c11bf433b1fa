// ddp::OverlappedOptimizer across processes (MPI, and gloo in the gloo entries): the
// parameters after several steps equal, bit for bit, those of the same torch::optim
// optimizer stepped after backward(), with early buckets updated while later ones are on
// the wire. The protocol cases run on thread ranks (tests/unit/thread_ranks_overlap_test.cpp).
#include <catch2/catch.hpp>

#include "optimizer_pair.h"
#include "world.h"

using ddp::test::OptimizerKind;
using ddp::test::PairConfig;

TEST_CASE("an overlapped optimizer equals the plain one bit for bit across processes", "[optimizer]") {
  auto pg = ddp::test::world_ptr();
  torch::manual_seed(31); // every process makes the same initial model
  const ddp::test::OverlapNet initial;
  const auto options = ddp::test::test_options().bucket_cap_mb(0.004).first_bucket_cap_mb(0.001);
  for (auto kind : {OptimizerKind::kAdam, OptimizerKind::kAdamW, OptimizerKind::kSgdNesterov}) {
    PairConfig c;
    c.kind = kind;
    c.options = options;
    c.scheduler = true;
    c.steps = 5;
    auto out = ddp::test::run_optimizer_pair(pg->rank(), pg, initial, c);
    INFO(ddp::test::kind_name(kind) << ": " << out.first_difference);
    CHECK(out.equal);
    CHECK(out.updated_in_backward > 0);
    CHECK(out.reported_early > 0);
  }
  SECTION("no_sync accumulation and a head used on rank 0 only") {
    PairConfig c;
    c.options = ddp::Options(options).find_unused_parameters(true);
    c.accumulate = 2;
    c.side = PairConfig::Side::kRankZero;
    auto out = ddp::test::run_optimizer_pair(pg->rank(), pg, initial, c);
    INFO(out.first_difference);
    CHECK(out.equal);
    CHECK(out.no_sync_untouched);
  }
}
