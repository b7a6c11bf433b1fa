// Conformance tests written once against ddp::ProcessGroup; a backend's test file
// instantiates them with one line: DDP_PROCESS_GROUP_CONFORMANCE("[mpi]", make_group, options)
// where make_group() returns the group under test and `options` places its tensors.
// Expected values are closed-form functions of rank and size.
#pragma once

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <ddp/ddp.h>

#define DDP_PROCESS_GROUP_CONFORMANCE(TAG, MAKE_GROUP, TENSOR_OPTIONS)                                       \
  TEST_CASE("allreduce sums every dtype " TAG, TAG "[pg]") {                                                  \
    auto pg = MAKE_GROUP();                                                                                   \
    const int n = pg->size();                                                                                 \
    const int r = pg->rank();                                                                                 \
    for (auto dtype : {at::kFloat, at::kDouble, at::kInt, at::kLong, at::kHalf, at::kBFloat16}) {            \
      CAPTURE(c10::toString(dtype));                                                                          \
      at::Tensor t = at::arange(10, at::TensorOptions(TENSOR_OPTIONS).dtype(at::kDouble)).add(r).to(dtype);   \
      pg->allreduce(t)->wait(std::chrono::seconds(60));                                                       \
      /* sum over r of (i + r) = n*i + n(n-1)/2 */                                                            \
      at::Tensor expected = at::arange(10, at::kDouble).mul(n).add(n * (n - 1) / 2.0);                        \
      CHECK(at::equal(t.cpu().to(at::kDouble), expected));                                                    \
    }                                                                                                         \
  }                                                                                                           \
  TEST_CASE("allreduce sums large tensors of uneven length exactly " TAG, TAG "[pg]") {                        \
    /* Sizes around the MPI backend's ring threshold (256 KiB) and its 1 MiB chunks, none a                  \
       multiple of the world size: every segment and chunk boundary is crossed. Values are                    \
       small integers, exact in every dtype, so the sum is exact whatever the order. */                       \
    auto pg = MAKE_GROUP();                                                                                   \
    const int n = pg->size();                                                                                 \
    const int r = pg->rank();                                                                                 \
    const std::pair<c10::ScalarType, int64_t> cases[] = {                                                     \
        {at::kFloat, (256 << 10) / 4 + 1}, {at::kFloat, 3 * (1 << 18) + 2}, {at::kDouble, 300007},             \
        {at::kLong, 40009}, {at::kHalf, 1200001}, {at::kBFloat16, 700003}, {at::kInt, 65535}};                  \
    for (const auto& [dtype, numel] : cases) {                                                                \
      CAPTURE(c10::toString(dtype), numel);                                                                   \
      at::Tensor pattern = at::arange(numel, at::kLong).remainder(7).to(at::kDouble);                         \
      at::Tensor t = pattern.add(r).to(at::TensorOptions(TENSOR_OPTIONS).dtype(dtype));                        \
      pg->allreduce(t)->wait(std::chrono::seconds(60));                                                       \
      at::Tensor expected = pattern.mul(n).add(n * (n - 1) / 2.0);                                            \
      CHECK(at::equal(t.cpu().to(at::kDouble), expected));                                                    \
    }                                                                                                         \
  }                                                                                                           \
  TEST_CASE("broadcast from every root " TAG, TAG "[pg]") {                                                   \
    auto pg = MAKE_GROUP();                                                                                   \
    for (int root = 0; root < pg->size(); ++root) {                                                           \
      at::Tensor t = at::full({1000}, static_cast<float>(pg->rank() * 10 + 1), TENSOR_OPTIONS);               \
      pg->broadcast(t, root)->wait(std::chrono::seconds(60));                                                 \
      CHECK(at::equal(t.cpu(), at::full({1000}, static_cast<float>(root * 10 + 1))));                         \
    }                                                                                                         \
  }                                                                                                           \
  TEST_CASE("allgather places rank r's input in output r " TAG, TAG "[pg]") {                                 \
    auto pg = MAKE_GROUP();                                                                                   \
    at::Tensor in = at::full({3, 2}, static_cast<double>(pg->rank()), at::TensorOptions(TENSOR_OPTIONS).dtype(at::kDouble)); \
    std::vector<at::Tensor> outs;                                                                             \
    for (int r = 0; r < pg->size(); ++r) outs.push_back(at::empty_like(in));                                  \
    pg->allgather(outs, in)->wait(std::chrono::seconds(60));                                                  \
    for (int r = 0; r < pg->size(); ++r) CHECK(at::equal(outs[r].cpu(), at::full({3, 2}, double(r), at::kDouble))); \
  }                                                                                                           \
  TEST_CASE("collectives complete in issue order " TAG, TAG "[pg]") {                                         \
    auto pg = MAKE_GROUP();                                                                                   \
    std::vector<at::Tensor> tensors;                                                                          \
    std::vector<std::shared_ptr<ddp::Work>> works;                                                            \
    for (int i = 0; i < 20; ++i) {                                                                            \
      tensors.push_back(at::full({(i % 4 + 1) * 5000}, float(i), TENSOR_OPTIONS));                             \
      works.push_back(pg->allreduce(tensors.back()));                                                         \
      CHECK(works.back()->sequence() > (i ? works[i - 1]->sequence() : 0));                                   \
    }                                                                                                         \
    works.back()->wait(std::chrono::seconds(60));                                                             \
    for (int i = 0; i < 20; ++i) {                                                                            \
      CHECK(works[i]->is_completed());                                                                        \
      CHECK(at::equal(tensors[i].cpu(), at::full({(i % 4 + 1) * 5000}, float(i) * pg->size())));              \
    }                                                                                                         \
    pg->barrier();                                                                                            \
  }                                                                                                           \
  TEST_CASE("allgather rejects a wrong number of outputs " TAG, TAG "[pg]") {                                 \
    auto pg = MAKE_GROUP();                                                                                   \
    at::Tensor in = at::zeros({2}, TENSOR_OPTIONS);                                                           \
    std::vector<at::Tensor> outs{at::zeros({2}, TENSOR_OPTIONS)};                                             \
    outs.resize(pg->size() + 1, at::zeros({2}, TENSOR_OPTIONS));                                              \
    CHECK_THROWS_WITH(pg->allgather(outs, in),                                                                \
                      Catch::Contains("output tensors given") && Catch::Contains("one output per rank"));     \
  }
