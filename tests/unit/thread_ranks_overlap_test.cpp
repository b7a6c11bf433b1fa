// ddp::OverlappedOptimizer with the ranks as threads of this process, at world 2 and 3:
// the parameters equal, bit for bit, those of the same torch::optim optimizer stepped after
// backward(), across optimizers, bucket layouts, no_sync(), unused parameters, schedulers,
// hooks and clipping; its state moves between overlapped and plain training through the
// optimizer's own checkpoint format; and each misuse is an error that says what to do.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <sstream>
#include <string>
#include <vector>

#include <ddp/ddp.h>
#include <ddp/join.h>

#include "misuse_fixtures.h"
#include "multi_fire_models.h"
#include "optimizer_pair.h"
#include "thread_ranks.h"

using Catch::Contains;
using ddp::test::OptimizerKind;
using ddp::test::PairConfig;
using ddp::test::run_ranks;
using PG = std::shared_ptr<ddp::ProcessGroup>;

namespace {

// Small caps: one bucket per weight or so, so that the early buckets are updated while
// the later ones are still reduced.
ddp::Options small_buckets() { return ddp::test::short_timeout().bucket_cap_mb(0.004).first_bucket_cap_mb(0.001); }

ddp::test::OverlapNet initial_net() {
  torch::manual_seed(31);
  return ddp::test::OverlapNet();
}

// When the overlapped optimizer updates: as each bucket's collective completes (while
// later ones are on the wire), at the end of finalize (after a hook's futures: still in the
// backward), or in step() (max_grad_norm).
enum class Updates { kEarly, kInFinalize, kInStep };

// Runs the pair on every rank of a world of `world` and checks the outcome.
void check_pair(int world, const PairConfig& config, Updates expected) {
  const auto initial = initial_net();
  auto results = run_ranks(world, [&](int rank, PG pg) { return run_optimizer_pair(rank, pg, initial, config); });
  for (const auto& r : results) {
    INFO("world " << world << ", rank " << r.rank << ", " << kind_name(config.kind) << ": " << r.error_type << " "
                  << r.error);
    REQUIRE(r.ok());
    INFO(r.value->first_difference);
    CHECK(r.value->equal);
    CHECK(r.value->no_sync_untouched);
    switch (expected) {
      case Updates::kEarly: // the point of it: updates while later buckets are reduced
        CHECK(r.value->updated_in_backward > 0);
        CHECK(r.value->reported_early > 0);
        break;
      case Updates::kInFinalize:
        CHECK(r.value->updated_in_backward > 0);
        CHECK(r.value->reported_early == 0);
        break;
      case Updates::kInStep:
        CHECK(r.value->updated_in_backward == 0);
        break;
    }
  }
}

} // namespace

TEST_CASE("thread ranks: an overlapped optimizer gives the parameters of the plain one, bit for bit",
          "[threads][optimizer]") {
  for (int world : {2, 3}) {
    for (auto kind : {OptimizerKind::kSgdMomentum, OptimizerKind::kSgdNesterov, OptimizerKind::kAdam,
                      OptimizerKind::kAdamW, OptimizerKind::kRmsprop, OptimizerKind::kAdagrad}) {
      PairConfig c;
      c.kind = kind;
      c.options = small_buckets();
      c.scheduler = true; // the learning rate halves every 2 steps: taken at the next step
      check_pair(world, c, Updates::kEarly);
    }
  }
}

TEST_CASE("thread ranks: an overlapped optimizer across bucket layouts, no_sync and unused parameters",
          "[threads][optimizer]") {
  for (int world : {2, 3}) {
    SECTION("gradients as bucket views, world " + std::to_string(world)) {
      PairConfig c;
      c.options = small_buckets().gradient_as_bucket_view(true);
      check_pair(world, c, Updates::kEarly);
    }
    SECTION("large gradients reduced in place, world " + std::to_string(world)) {
      PairConfig c;
      c.kind = OptimizerKind::kSgdMomentum;
      c.options = small_buckets().in_place_min_mb(0.01);
      check_pair(world, c, Updates::kEarly);
    }
    SECTION("one bucket (the default caps), world " + std::to_string(world)) {
      PairConfig c;
      c.options = ddp::test::short_timeout();
      check_pair(world, c, Updates::kEarly);
    }
    SECTION("no_sync: accumulates, updates only on the synchronised backward, world " + std::to_string(world)) {
      PairConfig c;
      c.options = small_buckets();
      c.accumulate = 3;
      check_pair(world, c, Updates::kEarly);
    }
    SECTION("a head used on rank 0 only (find_unused_parameters), world " + std::to_string(world)) {
      PairConfig c;
      c.options = small_buckets().find_unused_parameters(true);
      c.side = PairConfig::Side::kRankZero;
      check_pair(world, c, Updates::kEarly);
    }
    SECTION("a head no rank uses, .grad set to none: skipped as torch::optim skips it, world " +
            std::to_string(world)) {
      PairConfig c;
      c.options = small_buckets().find_unused_parameters(true);
      c.side = PairConfig::Side::kNone;
      check_pair(world, c, Updates::kEarly);
    }
    SECTION("a head no rank uses, .grad zeroed (defined): updated as torch::optim does, world " +
            std::to_string(world)) {
      PairConfig c;
      c.options = small_buckets().find_unused_parameters(true);
      c.side = PairConfig::Side::kNone;
      c.set_to_none = false;
      check_pair(world, c, Updates::kEarly);
    }
    SECTION("static_graph, world " + std::to_string(world)) {
      PairConfig c;
      c.kind = OptimizerKind::kAdamW;
      c.options = small_buckets().static_graph(true);
      c.side = PairConfig::Side::kRankZero;
      check_pair(world, c, Updates::kEarly);
    }
    SECTION("deferred step check, world " + std::to_string(world)) {
      PairConfig c;
      c.options = small_buckets().step_check(ddp::Options::StepCheck::kDeferred);
      check_pair(world, c, Updates::kEarly);
    }
  }
}

TEST_CASE("thread ranks: an overlapped optimizer with communication hooks and clipping", "[threads][optimizer]") {
  for (int world : {2, 3}) {
    SECTION("allreduce hook: updates after the hook's futures, world " + std::to_string(world)) {
      PairConfig c;
      c.options = small_buckets();
      c.hook = "allreduce";
      check_pair(world, c, Updates::kInFinalize);
    }
    SECTION("fp16 compression hook, world " + std::to_string(world)) {
      PairConfig c;
      c.kind = OptimizerKind::kSgdMomentum;
      c.options = small_buckets();
      c.hook = "fp16";
      check_pair(world, c, Updates::kInFinalize);
    }
    SECTION("clip_grad_value: bucket by bucket, the same as clip_grad_value_ before step, world " +
            std::to_string(world)) {
      PairConfig c;
      c.options = small_buckets();
      c.overlap.clip_grad_value(0.01);
      check_pair(world, c, Updates::kEarly);
    }
    SECTION("max_grad_norm: the same as clip_grad_norm_ before step, updates in step(), world " +
            std::to_string(world)) {
      PairConfig c;
      c.options = small_buckets();
      c.overlap.max_grad_norm(0.05);
      check_pair(world, c, Updates::kInStep);
    }
    SECTION("max_grad_norm, infinity norm, world " + std::to_string(world)) {
      PairConfig c;
      c.kind = OptimizerKind::kSgdMomentum;
      c.options = small_buckets();
      c.overlap.max_grad_norm(0.01).norm_type(std::numeric_limits<double>::infinity());
      check_pair(world, c, Updates::kInStep);
    }
  }
}

TEST_CASE("thread ranks: an overlapped optimizer's state is torch::optim's checkpoint, both ways",
          "[threads][optimizer]") {
  const auto initial = initial_net();
  for (int world : {2, 3}) {
    auto results = run_ranks(world, [&](int rank, PG pg) {
      auto data = [rank](int step) {
        const uint64_t seed = 500 + 10 * static_cast<uint64_t>(step) + rank;
        return std::make_pair(ddp::test::seeded_randn(seed, {8, 16}), ddp::test::seeded_randn(seed + 3, {8, 4}));
      };
      ddp::test::OverlapNet a, b;
      ddp::test::copy_parameters(initial, a);
      ddp::DistributedDataParallel overlapped(a, pg, small_buckets());
      auto opt = overlapped->overlap_optimizer(make_optimizer(OptimizerKind::kAdam, *a));
      for (int step = 0; step < 3; ++step) {
        auto [x, y] = data(step);
        opt->zero_grad();
        torch::mse_loss(overlapped(x, true), y).backward();
        opt->step();
      }
      // Overlapped -> plain: the optimizer's own format, loaded by a plain Adam.
      std::stringstream saved;
      torch::save(opt->optimizer(), saved);
      ddp::test::copy_parameters(a, b);
      ddp::DistributedDataParallel plain(b, pg, small_buckets());
      auto reference = make_optimizer(OptimizerKind::kAdam, *b);
      torch::load(*reference, saved);
      for (int step = 3; step < 5; ++step) {
        auto [x, y] = data(step);
        opt->zero_grad();
        reference->zero_grad();
        torch::mse_loss(overlapped(x, true), y).backward();
        torch::mse_loss(plain(x, true), y).backward();
        opt->step();
        reference->step();
      }
      bool equal = true;
      auto pb = b->named_parameters();
      for (const auto& p : a->named_parameters()) equal &= torch::equal(p.value(), pb[p.key()]);
      // Plain -> overlapped: a fresh overlapped optimizer loads the plain one's checkpoint.
      std::stringstream saved_plain;
      torch::save(*reference, saved_plain);
      ddp::test::OverlapNet c;
      ddp::test::copy_parameters(b, c);
      ddp::DistributedDataParallel resumed(c, pg, small_buckets());
      auto inner = make_optimizer(OptimizerKind::kAdam, *c);
      torch::load(*inner, saved_plain);
      auto resumed_opt = resumed->overlap_optimizer(inner);
      auto [x, y] = data(5);
      resumed_opt->zero_grad();
      reference->zero_grad();
      torch::mse_loss(resumed(x, true), y).backward();
      torch::mse_loss(plain(x, true), y).backward();
      resumed_opt->step();
      reference->step();
      auto pc = c->named_parameters();
      for (const auto& p : b->named_parameters()) equal &= torch::equal(p.value(), pc[p.key()]);
      return equal;
    });
    for (const auto& r : results) {
      INFO("world " << world << ", rank " << r.rank << ": " << r.error_type << " " << r.error);
      REQUIRE(r.ok());
      CHECK(*r.value);
    }
  }
}

TEST_CASE("thread ranks: what an overlapped optimizer refuses, and the errors that say what to do",
          "[threads][optimizer]") {
  const auto initial = initial_net();
  struct Seen {
    std::string lbfgs, null_optimizer, bad_clip, both_clips, second, join_after, join_before;
    bool second_after_destroy = false;
    std::string changed_grad, zeroed_grad, missed_step;
    bool recovers = false; // after each error, a normal step works again
  };
  auto results = run_ranks(2, [&](int rank, PG pg) {
    Seen seen;
    auto error_of = [](auto&& call) -> std::string {
      try {
        call();
      } catch (const ddp::InvalidArgumentError& e) {
        return e.what();
      }
      return "";
    };
    ddp::test::OverlapNet net;
    ddp::test::copy_parameters(initial, net);
    ddp::DistributedDataParallel model(net, pg, small_buckets());
    seen.lbfgs = error_of([&] {
      model->overlap_optimizer(std::make_shared<torch::optim::LBFGS>(net->parameters()));
    });
    seen.null_optimizer = error_of([&] { model->overlap_optimizer(nullptr); });
    seen.bad_clip = error_of([&] {
      model->overlap_optimizer(make_optimizer(OptimizerKind::kAdam, *net), ddp::OverlapOptions().clip_grad_value(0));
    });
    seen.both_clips = error_of([&] {
      model->overlap_optimizer(make_optimizer(OptimizerKind::kAdam, *net),
                               ddp::OverlapOptions().clip_grad_value(1).max_grad_norm(1));
    });
    {
      auto first = model->overlap_optimizer(make_optimizer(OptimizerKind::kAdam, *net));
      seen.second = error_of([&] { model->overlap_optimizer(make_optimizer(OptimizerKind::kAdam, *net)); });
      seen.join_after = error_of([&] { ddp::Join join(model); });
    }
    {
      ddp::Join join(model);
      seen.join_before = error_of([&] { model->overlap_optimizer(make_optimizer(OptimizerKind::kAdam, *net)); });
    }
    auto opt = model->overlap_optimizer(make_optimizer(OptimizerKind::kSgdMomentum, *net));
    seen.second_after_destroy = true;
    const auto x = ddp::test::seeded_randn(70 + rank, {8, 16});
    const auto y = ddp::test::seeded_randn(80 + rank, {8, 4});
    // clip_grad_norm_ after backward(): the updates already ran.
    opt->zero_grad();
    torch::mse_loss(model(x, true), y).backward();
    torch::nn::utils::clip_grad_norm_(net->parameters(), 1e-3);
    seen.changed_grad = error_of([&] { opt->step(); });
    // zero_grad between backward() and step().
    opt->zero_grad();
    torch::mse_loss(model(x, true), y).backward();
    opt->zero_grad();
    seen.zeroed_grad = error_of([&] { opt->step(); });
    // Two synchronised backward passes without a step() between them.
    opt->zero_grad();
    torch::mse_loss(model(x, true), y).backward();
    torch::mse_loss(model(x, true), y).backward();
    seen.missed_step = error_of([&] { opt->step(); });
    opt->zero_grad();
    torch::mse_loss(model(x, true), y).backward();
    seen.recovers = error_of([&] { opt->step(); }).empty() && opt->updated_in_backward() > 0;
    return seen;
  });
  for (const auto& r : results) {
    INFO("rank " << r.rank << ": " << r.error_type << " " << r.error);
    REQUIRE(r.ok());
    const Seen& s = *r.value;
    const std::string me = "[ddp rank " + std::to_string(r.rank) + "]";
    CHECK_THAT(s.lbfgs, Contains(me) && Contains("LBFGS") && Contains("step it after backward()"));
    CHECK_THAT(s.null_optimizer, Contains("null"));
    CHECK_THAT(s.bad_clip, Contains("clip_grad_value") && Contains("> 0"));
    CHECK_THAT(s.both_clips, Contains("choose one"));
    CHECK_THAT(s.second, Contains("already has an overlapped optimizer"));
    CHECK_THAT(s.join_after, Contains("ddp::Join") && Contains(me));
    CHECK_THAT(s.join_before, Contains("ddp::Join is armed"));
    CHECK(s.second_after_destroy);
    CHECK_THAT(s.changed_grad, Contains(me) && Contains("changed between backward() and step()") &&
                                   Contains("fc") && Contains("max_grad_norm"));
    CHECK_THAT(s.zeroed_grad, Contains(me) && Contains("changed between backward() and step()"));
    CHECK_THAT(s.missed_step, Contains("before step() was called") && Contains("no_sync()"));
    CHECK(s.recovers);
  }
}

TEST_CASE("thread ranks: an overlapped optimizer with parameters whose hook runs more than once",
          "[threads][optimizer][multifire]") {
  // Reentrant checkpointing over a block sharing w_shared with the rest (rank 0), the plain
  // graph on the other ranks: the first iteration's late runs are reduced in follow-ups
  // before the update; from the second, the runs are learned and the buckets update early.
  for (int world : {2, 3}) {
    auto results = run_ranks(world, [](int rank, PG pg) {
      const auto options = ddp::test::short_timeout().bucket_cap_mb(0.0001).first_bucket_cap_mb(0.0001);
      ddp::test::MultiFireNet plain_net, overlap_net;
      plain_net->shape = overlap_net->shape =
          rank == 0 ? ddp::test::FireShape::kShared : ddp::test::FireShape::kPlain;
      ddp::DistributedDataParallel plain(plain_net, pg, options);
      ddp::DistributedDataParallel overlapped(overlap_net, pg, options);
      auto reference = std::make_shared<torch::optim::Adam>(plain_net->parameters(), torch::optim::AdamOptions(1e-2));
      auto opt = overlapped->overlap_optimizer(
          std::make_shared<torch::optim::Adam>(overlap_net->parameters(), torch::optim::AdamOptions(1e-2)));
      bool equal = true;
      int64_t updated_after_first = 0;
      for (int step = 0; step < 4; ++step) {
        const auto x = ddp::test::multi_fire_input(rank, step, 5);
        reference->zero_grad();
        opt->zero_grad();
        plain(x).pow(2).mean().backward();
        overlapped(x).pow(2).mean().backward();
        reference->step();
        opt->step();
        if (step > 0) updated_after_first += opt->updated_in_backward();
        auto a = plain_net->named_parameters();
        for (const auto& p : overlap_net->named_parameters()) equal &= torch::equal(p.value(), a[p.key()]);
      }
      return std::make_tuple(equal, updated_after_first, overlapped->reducer().stats().buckets_reported_early,
                             overlapped->reducer().stats().follow_up_collectives);
    });
    for (const auto& r : results) {
      INFO("world " << world << ", rank " << r.rank << ": " << r.error_type << " " << r.error);
      REQUIRE(r.ok());
      const auto& [equal, updated, early, follow_ups] = *r.value;
      CHECK(equal);
      CHECK(updated > 0);
      CHECK(early > 0);
      CHECK(follow_ups > 0); // the first iteration's late runs were reduced
    }
  }
}
