// Parameters whose gradient hook runs more than once per backward (reentrant activation
// checkpointing over a block that shares a parameter with the rest of the model; a
// parameter reached through two checkpointed blocks), with the ranks as threads at world 2
// and 3: the gradients equal single-process autograd on the whole batch, with and without
// static_graph and find_unused_parameters, with .grad copied, a bucket view, or reduced in
// place, and when the ranks disagree (one rank checkpoints, so its hook runs two or three
// times, the other's once). Every parameter is its own bucket, so the first iteration's
// later runs come after their bucket launched (reduced in a follow-up all-reduce on every
// rank); from the second iteration on the buckets wait for the learned number of runs.
// ThreadProcessGroup pairs the ranks' calls in order and fails a slot whose calls differ,
// so a follow-up issued on one rank and not another is an error here, not a silent pass.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <string>
#include <vector>

#include <ddp/ddp.h>

#include "misuse_fixtures.h"
#include "multi_fire_models.h"
#include "rank_results.h"
#include "thread_ranks.h"
#include "world.h"

using ddp::test::FireShape;
using ddp::test::MultiFireNet;
using ddp::test::MultiFireNetImpl;
using ddp::test::run_ranks;
using PG = std::shared_ptr<ddp::ProcessGroup>;

namespace {

constexpr int kSteps = 3;
constexpr int64_t kShard = 6;

enum class Storage { kCopy, kBucketView, kInPlace };

const char* name_of(Storage s) {
  switch (s) {
    case Storage::kCopy: return "copy";
    case Storage::kBucketView: return "bucket view";
    case Storage::kInPlace: return "in place";
  }
  return "?";
}

const char* name_of(FireShape s) {
  switch (s) {
    case FireShape::kPlain: return "plain";
    case FireShape::kShared: return "shared";
    case FireShape::kTwoBlocks: return "two blocks";
  }
  return "?";
}

// Every parameter its own bucket; `storage` says where the gradient is reduced.
ddp::Options options_for(bool static_graph, bool find_unused, Storage storage) {
  ddp::Options o = ddp::test::short_timeout();
  o.bucket_cap_mb(1e-6).first_bucket_cap_mb(1e-6).static_graph(static_graph).find_unused_parameters(find_unused);
  o.step_check(ddp::Options::StepCheck::kStrict);
  if (storage == Storage::kBucketView) o.gradient_as_bucket_view(true);
  o.in_place_min_mb(storage == Storage::kInPlace ? 1e-6 : 0.0);
  return o;
}

// Single-process autograd on every rank's shard at once (the plain graph).
std::vector<std::vector<at::Tensor>> oracle(int world) {
  MultiFireNet net;
  std::vector<std::vector<at::Tensor>> grads;
  for (int s = 0; s < kSteps; ++s) {
    std::vector<at::Tensor> shards;
    for (int q = 0; q < world; ++q) shards.push_back(ddp::test::multi_fire_input(q, s, kShard));
    net->zero_grad();
    net(torch::cat(shards)).pow(2).mean().backward();
    std::vector<at::Tensor> step;
    for (const auto& p : net->parameters()) step.push_back(p.grad().clone());
    grads.push_back(step);
  }
  return grads;
}

struct Seen {
  std::vector<std::vector<at::Tensor>> grads; // per step, per parameter
  std::vector<int64_t> follow_ups;            // stats.follow_up_collectives after each step
  std::vector<bool> identical;                // per step: every parameter bit-identical across ranks
  int64_t iterations = 0;
};

// `shape_of(rank)`: the graph that rank's forward takes.
std::vector<ddp::test::RankResult<Seen>> train(int world, const ddp::Options& options,
                                               const std::function<FireShape(int)>& shape_of) {
  return run_ranks(world, [&](int rank, PG pg) {
    MultiFireNet net;
    net->shape = shape_of(rank);
    ddp::DistributedDataParallel model(net, pg, options);
    Seen seen;
    for (int s = 0; s < kSteps; ++s) {
      // Zeroed in place: a bucket view stays the .grad (set_to_none would drop it).
      for (auto& p : model->parameters()) {
        if (p.grad().defined()) p.mutable_grad().zero_();
      }
      model(ddp::test::multi_fire_input(rank, s, kShard)).pow(2).mean().backward();
      std::vector<at::Tensor> step;
      bool identical = true;
      for (const auto& p : net->parameters()) {
        const bool defined = p.grad().defined();
        step.push_back(defined ? p.grad().clone() : at::Tensor());
        // A collective: every rank calls it for every parameter.
        const bool same = ddp::test::identical_across_ranks(defined ? p.grad() : torch::zeros({0}));
        identical = identical && defined && same;
      }
      seen.grads.push_back(step);
      seen.identical.push_back(identical);
      seen.follow_ups.push_back(model->reducer().stats().follow_up_collectives);
    }
    seen.iterations = model->reducer().stats().iterations;
    return seen;
  });
}

void check_against_oracle(const std::vector<ddp::test::RankResult<Seen>>& results, int world) {
  ddp::test::require_values(results);
  const auto expected = oracle(world);
  const double tolerance =
      ddp::test::reduction_tolerance(at::kFloat, MultiFireNetImpl::reduction_terms(world * kShard));
  for (const auto& r : results) {
    CAPTURE(r.rank);
    const Seen& seen = *r.value;
    CHECK(seen.iterations == kSteps);
    for (int s = 0; s < kSteps; ++s) {
      CAPTURE(s);
      CHECK(seen.identical[static_cast<size_t>(s)]);
      for (size_t i = 0; i < expected[static_cast<size_t>(s)].size(); ++i) {
        CAPTURE(i);
        const at::Tensor& got = seen.grads[static_cast<size_t>(s)][i];
        REQUIRE(got.defined());
        CHECK(ddp::test::max_relative_error(got, expected[static_cast<size_t>(s)][i]) <= tolerance);
      }
    }
  }
}

} // namespace

TEST_CASE("thread ranks: a hook that runs more than once per backward is reduced once, like single-process autograd",
          "[threads][multifire]") {
  for (int world : {2, 3}) {
    for (FireShape shape : {FireShape::kShared, FireShape::kTwoBlocks}) {
      for (bool disagree : {false, true}) {
        for (bool static_graph : {false, true}) {
          for (bool find_unused : {false, true}) {
            for (Storage storage : {Storage::kCopy, Storage::kBucketView, Storage::kInPlace}) {
              CAPTURE(world, name_of(shape), disagree, static_graph, find_unused, name_of(storage));
              // disagree: rank 1 takes the plain graph (its hooks run once), the others checkpoint.
              auto results = train(world, options_for(static_graph, find_unused, storage),
                                   [&](int rank) { return disagree && rank == 1 ? FireShape::kPlain : shape; });
              check_against_oracle(results, world);
              // The first iteration's later runs come after their bucket launched: reduced in
              // follow-ups, the same number on every rank; then the buckets wait for them.
              const auto& first = *results[0].value;
              CHECK(first.follow_ups[0] >= 1);
              for (const auto& r : results) {
                CAPTURE(r.rank);
                CHECK(r.value->follow_ups == first.follow_ups);
                CHECK(r.value->follow_ups[kSteps - 1] == r.value->follow_ups[0]);
              }
            }
          }
        }
      }
    }
  }
}

TEST_CASE("thread ranks: a model without repeated hooks issues no follow-up", "[threads][multifire]") {
  for (int world : {2, 3}) {
    CAPTURE(world);
    auto results = train(world, options_for(false, false, Storage::kCopy), [](int) { return FireShape::kPlain; });
    check_against_oracle(results, world);
    for (const auto& r : results) CHECK(r.value->follow_ups[kSteps - 1] == 0);
  }
}

namespace {
// Backward runs a nested backward through `w` before anything else of the model: the
// first hook of the step runs inside a nested graph task, whose end is not the end of the
// backward being reduced.
struct NestedFirst : torch::autograd::Function<NestedFirst> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w) {
    ctx->saved_data["w"] = w;
    return x.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::Tensor w = ctx->saved_data["w"].toTensor();
    {
      torch::AutoGradMode enable(true);
      (w * 2).sum().backward();
    }
    return {grads[0], torch::Tensor()};
  }
};
} // namespace

TEST_CASE("thread ranks: the first hook inside a nested backward; the reduction ends with the outermost backward",
          "[threads][multifire]") {
  for (int world : {2, 3}) {
    for (bool find_unused : {false, true}) {
      CAPTURE(world, find_unused);
      struct Seen {
        at::Tensor weight, bias;
        int64_t iterations = 0;
      };
      auto results = run_ranks(world, [&](int rank, PG pg) {
        torch::nn::Linear lin(3, 2);
        {
          torch::NoGradGuard no_grad;
          lin->weight.fill_(0.5);
          lin->bias.fill_(0.25);
        }
        ddp::Options o = ddp::test::short_timeout();
        o.find_unused_parameters(find_unused).step_check(ddp::Options::StepCheck::kStrict);
        ddp::DistributedDataParallel model(lin, pg, o);
        Seen seen;
        for (int s = 0; s < 2; ++s) {
          model->zero_grad();
          // Rank q's input is all q + 1: d(sum out)/dW = (q + 1) * rows per element.
          const torch::Tensor x = torch::full({2, 3}, static_cast<float>(rank + 1));
          NestedFirst::apply(model(x), lin->weight).sum().backward();
        }
        seen.weight = lin->weight.grad().clone();
        seen.bias = lin->bias.grad().clone();
        seen.iterations = model->reducer().stats().iterations;
        return seen;
      });
      ddp::test::require_values(results);
      // weight: 2 (the nested backward) + the mean over ranks of 2 (q + 1); bias: 2.
      double mean_input = 0;
      for (int q = 0; q < world; ++q) mean_input += q + 1;
      mean_input /= world;
      for (const auto& r : results) {
        CAPTURE(r.rank);
        CHECK(r.value->iterations == 2);
        CHECK(torch::allclose(r.value->weight, torch::full({2, 3}, static_cast<float>(2 + 2 * mean_input))));
        CHECK(torch::allclose(r.value->bias, torch::full({2}, 2.0F)));
      }
    }
  }
}
