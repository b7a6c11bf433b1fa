// DDP_TIMELINE / Options::timeline_path: one Chrome-trace file per rank that parses and
// whose events are in a causal order.
#include <catch2/catch.hpp>

#include <cstdio>

#include "models.h"
#include "world.h"

TEST_CASE("the timeline file parses and its events are ordered", "[timeline]") {
  auto pg = ddp::test::world_ptr();
  const std::string path = "timeline_mpi_test.json";
  {
    ddp::test::Mlp net;
    ddp::Options o = ddp::test::test_options();
    o.timeline_path(path);
    o.first_bucket_cap_mb(1e-6);
    o.bucket_cap_mb(1e-3);
    ddp::DistributedDataParallel model(net, pg, o);
    for (int i = 0; i < 3; ++i) model(torch::randn({4, 8})).sum().backward();
    const auto& events = model->reducer().timeline().events();
    // Per iteration: each bucket's collective starts after it was ready and ends before
    // finalize ends; finalize is the last thing of the iteration.
    for (int64_t it = 0; it < 3; ++it) {
      std::map<int64_t, ddp::Timeline::Event> ready, collective;
      std::optional<ddp::Timeline::Event> finalize;
      for (const auto& e : events) {
        if (e.iteration != it) continue;
        if (e.kind == ddp::Timeline::Kind::kBucketReady) ready[e.index] = e;
        if (e.kind == ddp::Timeline::Kind::kCollective) collective[e.index] = e;
        if (e.kind == ddp::Timeline::Kind::kFinalize) finalize = e;
      }
      REQUIRE(finalize);
      CHECK(collective.size() == static_cast<size_t>(model->reducer().stats().buckets));
      for (const auto& [b, c] : collective) {
        CAPTURE(it, b);
        if (ready.count(b)) CHECK(c.start >= ready[b].start);
        CHECK(c.end <= finalize->end);
        if (b > 0) CHECK(c.start >= collective[b - 1].start); // launched in bucket order
      }
    }
  } // the reducer writes the file when it is destroyed
  const std::string mine = "timeline_mpi_test.rank" + std::to_string(pg->rank()) + ".json";
  const std::string check =
      "python3 -c \"import json,sys; ev=json.load(open(sys.argv[1])); "
      "xs=[e for e in ev if e.get('ph')=='X']; "
      "assert any(e['name'].startswith('allreduce bucket') for e in xs); "
      "assert any(e['name'].startswith('hook ') for e in xs); "
      "assert all(e['pid']==int(sys.argv[2]) for e in ev)\" " +
      mine + " " + std::to_string(pg->rank());
  CHECK(std::system(check.c_str()) == 0);
  std::remove(mine.c_str());
}
