// The arithmetic of ProcessGroup::allreduce_ordered (OrderedSum), with the exchange between
// ranks simulated here by moving rows: every element equals the scalar rank-order
// reference of tests/support/planted.h for any length, world size and wire dtype; and
// how Options become per-parameter reductions (ReductionPrecision) and buckets split by
// wire dtype.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <ddp/error.h>
#include <ddp/options.h>

#include "bucket/bucket_assignment.h"
#include "bucket/reduction_precision.h"
#include "comm/ordered_sum.h"
#include "planted.h"

namespace {

using ddp::OrderedReduce;
using ddp::detail::OrderedSum;

// Runs the owner-sums exchange of `inputs` (one tensor per rank) in this process, as the
// backends do across processes; returns every rank's result.
std::vector<torch::Tensor> simulate_exchange(const std::vector<torch::Tensor>& inputs, OrderedReduce how) {
  const int n = static_cast<int>(inputs.size());
  std::vector<torch::Tensor> tensors;
  std::vector<OrderedSum> sums;
  std::vector<torch::Tensor> packed;
  for (int r = 0; r < n; ++r) {
    tensors.push_back(inputs[static_cast<size_t>(r)].clone());
    sums.emplace_back(tensors.back(), n, r, how);
    packed.push_back(sums.back().pack(nullptr).clone());
  }
  // All-to-all: rank j receives row j of every rank's packed tensor, row r from rank r.
  std::vector<torch::Tensor> mine;
  for (int j = 0; j < n; ++j) {
    torch::Tensor pieces = sums[static_cast<size_t>(j)].pieces(nullptr);
    for (int r = 0; r < n; ++r) pieces[r].copy_(packed[static_cast<size_t>(r)][j]);
    mine.push_back(sums[static_cast<size_t>(j)].add(pieces, nullptr).clone());
  }
  // Allgather: every rank receives row j from rank j.
  for (int r = 0; r < n; ++r) {
    torch::Tensor gathered = sums[static_cast<size_t>(r)].gathered(nullptr);
    for (int j = 0; j < n; ++j) gathered[j].copy_(mine[static_cast<size_t>(j)]);
    sums[static_cast<size_t>(r)].unpack(gathered);
  }
  return tensors;
}

torch::Tensor wide_range(int64_t numel, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randn({numel}, gen) * torch::exp2(torch::randint(-30, 31, {numel}, gen, torch::kFloat));
}

} // namespace

TEST_CASE("OrderedSum: the rank-order sum, divided, for any length, world size and wire dtype", "[ordered]") {
  for (int n : {1, 2, 3, 4, 5}) {
    for (int64_t numel : {1, 2, 7, 64, 1001}) {
      for (auto wire : {at::kFloat, at::kBFloat16, at::kHalf}) {
        CAPTURE(n, numel, c10::toString(wire));
        std::vector<torch::Tensor> inputs;
        for (int r = 0; r < n; ++r) {
          torch::Tensor x = wide_range(numel, static_cast<uint64_t>(31 * r + numel));
          // float16 holds 2^-24 .. 65504: keep its inputs in range.
          if (wire == at::kHalf) x = x.clamp(-60000, 60000) * 1e-5;
          inputs.push_back(x);
        }
        const torch::Tensor expected = ddp::test::rank_order_average(inputs, wire, n);
        for (const auto& result : simulate_exchange(inputs, OrderedReduce{wire, at::kFloat, n})) {
          CHECK(ddp::test::differing_bits(result, expected) == 0);
        }
      }
    }
  }
}

TEST_CASE("OrderedSum: the chunk is a ceiling division and pack pads with zeros", "[ordered]") {
  torch::Tensor t = torch::arange(7, torch::kFloat);
  OrderedSum sum(t, 3, 0, OrderedReduce{at::kFloat, at::kFloat, 1});
  CHECK(sum.chunk() == 3);
  const torch::Tensor packed = sum.pack(nullptr);
  CHECK(packed.sizes() == std::vector<int64_t>{3, 3});
  CHECK(torch::equal(packed.view({-1}).narrow(0, 0, 7), t));
  CHECK(packed.view({-1})[7].item<float>() == 0.0f);
  CHECK(packed.view({-1})[8].item<float>() == 0.0f);
  // No cast and no padding: the tensor itself is sent.
  torch::Tensor even = torch::ones({6});
  const OrderedSum direct(even, 3, 0, OrderedReduce{at::kFloat, at::kFloat, 1});
  CHECK(direct.pack(nullptr).data_ptr() == even.data_ptr());
  CHECK(direct.gathered(nullptr).data_ptr() == even.data_ptr());
  // Scratch is kept and reused while large enough.
  OrderedSum::Scratch scratch;
  const void* first = sum.pieces(&scratch).data_ptr();
  CHECK(sum.pieces(&scratch).data_ptr() == first);
}

TEST_CASE("OrderedSum: bad arguments name the rank and the dtype", "[ordered]") {
  CHECK_THROWS_WITH(OrderedSum(torch::ones({4}), 2, 1, OrderedReduce{at::kInt, at::kFloat, 1}),
                    Catch::Contains("[ddp rank 1]") && Catch::Contains("wire dtype is Int"));
  CHECK_THROWS_WITH(OrderedSum(torch::ones({4}, torch::kLong), 2, 0, OrderedReduce{at::kFloat, at::kFloat, 1}),
                    Catch::Contains("tensor's dtype is Long"));
  CHECK_THROWS_WITH(OrderedSum(torch::ones({4}), 2, 0, OrderedReduce{at::kFloat, at::kFloat, 0}),
                    Catch::Contains("divisor is 0"));
  CHECK_THROWS_AS(OrderedSum(torch::ones({4, 4}).t(), 2, 0, OrderedReduce{at::kFloat, at::kFloat, 1}),
                  ddp::InvalidArgumentError);
}

TEST_CASE("ReductionPrecision: wire dtype by name pattern, float32 sums for half gradients", "[ordered]") {
  const std::vector<std::string> names{"fc.weight", "fc.bias", "norm.weight", "head.weight"};
  const std::vector<at::Tensor> params{torch::zeros({4}), torch::zeros({2}), torch::zeros({2}),
                                       torch::zeros({3}, torch::kBFloat16)};
  SECTION("default: the all-reduce") {
    ddp::detail::ReductionPrecision p(ddp::Options(), names, params, 0);
    CHECK_FALSE(p.ordered());
  }
  SECTION("reproducible alone: the gradients' own dtypes, float32 sums for bfloat16") {
    ddp::detail::ReductionPrecision p(ddp::Options().reproducible(true), names, params, 0);
    CHECK(p.ordered());
    CHECK(p.of(0).wire == at::kFloat);
    CHECK(p.of(0).accumulate == at::kFloat);
    CHECK(p.of(3).wire == at::kBFloat16);
    CHECK(p.of(3).accumulate == at::kFloat);
  }
  SECTION("wire_dtype with overrides: the first matching pattern wins") {
    const auto o = ddp::Options().wire_dtype(at::kBFloat16).wire_dtype_overrides(
        {{"*.bias", at::kFloat}, {"norm*", at::kHalf}, {"*norm*", at::kFloat}});
    ddp::detail::ReductionPrecision p(o, names, params, 0);
    CHECK(p.ordered());
    CHECK(p.of(0).wire == at::kBFloat16);
    CHECK(p.of(1).wire == at::kFloat);
    CHECK(p.of(2).wire == at::kHalf);
    CHECK(p.of(3).wire == at::kBFloat16);
    CHECK(p.bucket_groups()[0] != p.bucket_groups()[1]);
  }
  SECTION("accumulate_dtype replaces the default") {
    ddp::detail::ReductionPrecision p(ddp::Options().reproducible(true).accumulate_dtype(at::kDouble), names, params,
                                      2);
    CHECK(p.of(0).accumulate == at::kDouble);
  }
  SECTION("a pattern matching nothing, a non-floating dtype: errors naming them") {
    CHECK_THROWS_WITH(ddp::detail::ReductionPrecision(ddp::Options().wire_dtype_overrides({{"fc.bais", at::kFloat}}),
                                                      names, params, 1),
                      Catch::Contains("[ddp rank 1]") && Catch::Contains("wire_dtype_overrides[0]") &&
                          Catch::Contains("fc.bais"));
    CHECK_THROWS_WITH(
        ddp::detail::ReductionPrecision(ddp::Options().accumulate_dtype(at::kLong), names, params, 0),
        Catch::Contains("Options::accumulate_dtype is Long"));
  }
}

TEST_CASE("assign_buckets: groups never share a bucket", "[ordered]") {
  const std::vector<at::Tensor> t{torch::zeros({10}), torch::zeros({10}), torch::zeros({10}), torch::zeros({10})};
  using Buckets = std::vector<std::vector<size_t>>;
  CHECK(ddp::detail::assign_buckets(t, ddp::detail::reverse_order(4), {1 << 20, 1 << 20}) == Buckets{{3, 2, 1, 0}});
  CHECK(ddp::detail::assign_buckets(t, ddp::detail::reverse_order(4), {1 << 20, 1 << 20}, {0, 1, 0, 1}) ==
        Buckets{{3, 1}, {2, 0}});
}
