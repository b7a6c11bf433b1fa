// The argument checks and the collective description that every backend shares
// (src/comm/argument_checks.h, src/comm/collective_description.h): their messages, and
// the order in which the backend's device rule runs among them.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <ddp/error.h>

#include "comm/argument_checks.h"
#include "comm/collective_description.h"

using Catch::Contains;

TEST_CASE("check_tensor: undefined first, then the backend's device rule, then dense and contiguous",
          "[unit][comm]") {
  int device_checks = 0;
  auto count = [&] { ++device_checks; };
  CHECK_THROWS_MATCHES(ddp::detail::check_tensor(3, "allreduce", at::Tensor(), count), ddp::InvalidArgumentError,
                       Catch::Message("[ddp rank 3] allreduce: the tensor is undefined"));
  CHECK(device_checks == 0);

  CHECK_THROWS_MATCHES(ddp::detail::check_tensor(1, "broadcast", torch::zeros({4, 4}).t(), count),
                       ddp::InvalidArgumentError,
                       Catch::Message("[ddp rank 1] broadcast: the tensor must be dense and contiguous (call "
                                      ".contiguous() first)"));
  CHECK(device_checks == 1);

  // The device rule's own error wins over the layout's.
  auto reject = [] { throw ddp::InvalidArgumentError("wrong device"); };
  CHECK_THROWS_MATCHES(ddp::detail::check_tensor(0, "allreduce", torch::zeros({4, 4}).t(), reject),
                       ddp::InvalidArgumentError, Catch::Message("wrong device"));
  CHECK_NOTHROW(ddp::detail::check_tensor(0, "allreduce", torch::zeros({4}), count));
}

TEST_CASE("check_allgather: the input, then the outputs' count and sizes, then each output", "[unit][comm]") {
  std::vector<std::string> seen;
  auto record = [&](const at::Tensor& t) { seen.push_back(std::to_string(t.numel())); };
  const at::Tensor input = torch::zeros({3});
  ddp::detail::check_allgather(0, 2, {torch::zeros({3}), torch::zeros({3})}, input, record);
  CHECK(seen == std::vector<std::string>{"3", "3", "3"});

  seen.clear();
  CHECK_THROWS_WITH(ddp::detail::check_allgather(1, 2, {torch::zeros({3})}, input, record),
                    Contains("[ddp rank 1] allgather: 1 output tensors given, the group has 2 ranks"));
  CHECK(seen.size() == 1); // the input was checked, no output was
  CHECK_THROWS_WITH(ddp::detail::check_allgather(0, 2, {torch::zeros({3}), torch::zeros({2})}, input, record),
                    Contains("every output must have the input's size and dtype (3 x Float), got 2 x Float"));
}

TEST_CASE("describe_collective: op, element count, dtype and MiB", "[unit][comm]") {
  CHECK(ddp::detail::describe_collective("allreduce", torch::zeros({1 << 20})) ==
        "allreduce of 1048576 x Float (4.00 MiB)");
  CHECK(ddp::detail::describe_collective("broadcast", torch::zeros({3}, torch::kFloat64)) ==
        "broadcast of 3 x Double (0.00 MiB)");
}
