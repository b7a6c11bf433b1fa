// DDP_TIMELINE / Options::timeline_path: one Chrome-trace file per rank that parses and
// whose events are in a causal order.
#include <catch2/catch.hpp>

#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <ddp/hooks.h>

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

namespace {

// The bytes of the collectives a hook issues for one bucket, in issue order, from the
// bucket's parameter shapes and the hook's documented contract (ddp/hooks.h), not from
// the hook's code. fp16_compress: one all-reduce of the bucket as float16. PowerSGD
// (rank 1, compressing from the first step): the gradients it does not compress in one
// all-reduce (first), then P (n x r per n x m matrix) and Q (m x r), in float32.
std::vector<int64_t> expected_hook_bytes(const std::string& hook, const std::vector<std::string>& bucket,
                                         const std::map<std::string, at::Tensor>& parameters) {
  int64_t numel = 0, plain = 0, p = 0, q = 0;
  for (const auto& name : bucket) {
    const at::Tensor& t = parameters.at(name);
    numel += t.numel();
    if (t.dim() >= 2) {
      const int64_t n = t.size(0);
      const int64_t m = t.numel() / n;
      if (n * m > 2 * (n + m)) { // min_compression_rate 2, r = 1
        p += n;
        q += m;
        continue;
      }
    }
    plain += t.numel();
  }
  if (hook == "fp16_compress") return {2 * numel};
  std::vector<int64_t> out;
  if (plain > 0) out.push_back(4 * plain);
  if (p > 0) {
    out.push_back(4 * p);
    out.push_back(4 * q);
  }
  return out;
}

} // namespace

TEST_CASE("a communication hook's collectives are on the timeline with their bucket, bytes and duration",
          "[timeline]") {
  auto pg = ddp::test::world_ptr();
  for (const std::string hook : {"fp16_compress", "powerSGD"}) {
    CAPTURE(hook);
    const std::string path = "timeline_hook_test.json";
    {
      ddp::test::Mlp net;
      // Three buckets: fc3.bias alone, then about 1 KiB each.
      ddp::Options o = ddp::test::test_options().timeline_path(path).first_bucket_cap_mb(1e-6).bucket_cap_mb(1e-3);
      ddp::DistributedDataParallel model(net, pg, o);
      ddp::hooks::PowerSGDOptions powersgd;
      powersgd.start_powerSGD_iter(0).matrix_approximation_rank(1);
      model->register_comm_hook(hook == "powerSGD" ? ddp::hooks::powersgd(powersgd) : ddp::hooks::fp16_compress());
      std::map<std::string, at::Tensor> parameters;
      for (const auto& p : net->named_parameters()) parameters[p.key()] = p.value();
      for (int64_t it = 0; it < 3; ++it) {
        CAPTURE(it);
        // The layout this backward reduces: the rebuild happens at the forward.
        auto out = model(torch::randn({4, 8}));
        const auto layout = model->reducer().bucket_layout();
        REQUIRE(layout.size() == 3);
        out.sum().backward();
        std::map<int64_t, std::vector<ddp::Timeline::Event>> by_bucket;
        std::optional<ddp::Timeline::Event> finalize;
        int64_t reducer_collectives = 0, bytes = 0;
        for (const auto& e : model->reducer().timeline().events()) {
          if (e.iteration != it) continue;
          if (e.kind == ddp::Timeline::Kind::kHookCollective) {
            by_bucket[e.index].push_back(e);
            bytes += e.bytes;
          }
          if (e.kind == ddp::Timeline::Kind::kCollective) reducer_collectives += 1;
          if (e.kind == ddp::Timeline::Kind::kFinalize) finalize = e;
        }
        REQUIRE(finalize);
        CHECK(reducer_collectives == 0); // the hook reduces every bucket
        CHECK(by_bucket.size() == layout.size());
        for (size_t b = 0; b < layout.size(); ++b) {
          CAPTURE(b);
          std::vector<int64_t> seen;
          for (const auto& e : by_bucket[static_cast<int64_t>(b)]) {
            seen.push_back(e.bytes);
            CHECK(std::string(e.op) == "allreduce");
            CHECK(e.end >= e.start);
            CHECK(e.end <= finalize->end);
          }
          CHECK(seen == expected_hook_bytes(hook, layout[b], parameters));
        }
        // The same bytes the reducer counts for the hook.
        CHECK(bytes == model->reducer().stats().hook_bytes_per_iteration);
      }
    } // the reducer writes the file when it is destroyed
    const std::string mine = "timeline_hook_test.rank" + std::to_string(pg->rank()) + ".json";
    const std::string check =
        "python3 -c \"import json,sys; ev=json.load(open(sys.argv[1])); "
        "hs=[e for e in ev if e.get('cat')=='hook_collective']; "
        "assert hs and all(e['ph']=='X' and e['tid']==2 and e['args']['bytes']>0 and e['dur']>=0 for e in hs); "
        "assert {e['name'] for e in hs if e['args']['iteration']==2}=={'allreduce bucket %d' % b for b in range(3)}\" " +
        mine;
    CHECK(std::system(check.c_str()) == 0);
    std::remove(mine.c_str());
  }
}
