// Parameters whose gradient hook runs more than once per backward, under mpirun at world
// 2 and 3 (docs/semantics.md, "Parameters whose hook runs more than once"): reentrant
// activation checkpointing over a block that shares a parameter with the rest of the model,
// a parameter reached through two checkpointed blocks, and ranks that disagree (one rank
// checkpoints, another does not). The gradients equal single-process autograd on the whole
// batch (tests/support/multi_fire_models.h), are bit-identical across ranks, and every
// rank issues the same follow-up all-reduces. The thread-rank cases
// (tests/unit/thread_ranks_multifire_test.cpp) cover the storage options.
#include <catch2/catch.hpp>

#include <torch/csrc/autograd/custom_function.h>

#include "multi_fire_models.h"
#include "world.h"

namespace {

using ddp::test::FireShape;
using ddp::test::identical_across_ranks;
using ddp::test::max_relative_error;
using ddp::test::MultiFireNet;
using ddp::test::MultiFireNetImpl;
using ddp::test::world;

constexpr int kSteps = 3;
constexpr int64_t kShard = 6;

// One step's oracle: single-process autograd on every rank's shard at once.
std::vector<at::Tensor> oracle_step(int world_size, int step) {
  MultiFireNet net;
  std::vector<at::Tensor> shards;
  for (int q = 0; q < world_size; ++q) shards.push_back(ddp::test::multi_fire_input(q, step, kShard));
  net(torch::cat(shards)).pow(2).mean().backward();
  std::vector<at::Tensor> grads;
  for (const auto& p : net->parameters()) grads.push_back(p.grad().clone());
  return grads;
}

// Backward runs a nested backward through `w` before any other node of the model: the
// step's first hook runs inside a nested graph task.
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

TEST_CASE("reentrant checkpointing, a shared parameter, ranks that disagree: gradients equal single-process autograd",
          "[multifire]") {
  const int rank = world().rank();
  const int size = world().size();
  const double tolerance = ddp::test::reduction_tolerance(at::kFloat, MultiFireNetImpl::reduction_terms(size * kShard));
  for (FireShape shape : {FireShape::kShared, FireShape::kTwoBlocks}) {
    for (bool disagree : {false, true}) {
      for (bool static_graph : {false, true}) {
        for (bool find_unused : {false, true}) {
          CAPTURE(static_cast<int>(shape), disagree, static_graph, find_unused);
          MultiFireNet net;
          net->shape = disagree && rank == 1 ? FireShape::kPlain : shape;
          ddp::Options o = ddp::test::test_options();
          // Every parameter its own bucket: the first step's later runs are late.
          o.bucket_cap_mb(1e-6).first_bucket_cap_mb(1e-6).static_graph(static_graph).find_unused_parameters(find_unused);
          ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), o);
          for (int s = 0; s < kSteps; ++s) {
            CAPTURE(s);
            model->zero_grad();
            model(ddp::test::multi_fire_input(rank, s, kShard)).pow(2).mean().backward();
            const auto expected = oracle_step(size, s);
            const auto params = net->parameters();
            for (size_t i = 0; i < params.size(); ++i) {
              CAPTURE(i);
              REQUIRE(params[i].grad().defined());
              CHECK(max_relative_error(params[i].grad(), expected[i]) <= tolerance);
              CHECK(identical_across_ranks(params[i].grad()));
            }
          }
          // The same follow-ups on every rank: at least one in the first step, none after.
          const int64_t follow_ups = model->reducer().stats().follow_up_collectives;
          CHECK(follow_ups >= 1);
          CHECK(ddp::test::sum_over_ranks(follow_ups) == follow_ups * size);
        }
      }
    }
  }
}

TEST_CASE("the first hook inside a nested backward: the reduction ends with the outermost backward", "[multifire]") {
  torch::nn::Linear lin(3, 3);
  ddp::DistributedDataParallel model(lin, ddp::test::world_ptr(), ddp::test::test_options());
  const int rank = world().rank();
  const int size = world().size();
  for (int s = 0; s < 2; ++s) {
    model->zero_grad();
    const torch::Tensor x = torch::full({2, 3}, static_cast<float>(rank + 1));
    CHECK_NOTHROW(NestedFirst::apply(model(x), lin->weight).sum().backward());
  }
  // weight: 2 (the nested backward) + the mean over ranks of 2 (q + 1); bias: 2.
  double mean_input = 0;
  for (int q = 0; q < size; ++q) mean_input += q + 1;
  mean_input /= size;
  CHECK(torch::allclose(lin->weight.grad(), torch::full({3, 3}, static_cast<float>(2 + 2 * mean_input))));
  CHECK(torch::allclose(lin->bias.grad(), torch::full({3}, 2.0F)));
  CHECK(model->reducer().stats().iterations == 2);
  CHECK(identical_across_ranks(lin->weight.grad()));
}
