#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "bucket/slot_copy.h"

using ddp::detail::copy_scaled;

TEST_CASE("copy_scaled copies and scales on the fast path and through ATen alike", "[bucket]") {
  for (auto dtype : {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16}) {
    CAPTURE(c10::toString(dtype));
    auto src = torch::arange(1, 13, torch::TensorOptions().dtype(dtype)).reshape({3, 4});
    auto dst = torch::zeros({3, 4}, dtype);
    copy_scaled(dst, src, 0.5);
    CHECK(torch::equal(dst, src * 0.5));
    copy_scaled(dst, src, 1.0);
    CHECK(torch::equal(dst, src));
  }
  // Non-contiguous source: through ATen, same result.
  auto src = torch::arange(12, torch::kFloat).reshape({4, 3}).t();
  auto dst = torch::zeros({3, 4});
  copy_scaled(dst, src, 2.0);
  CHECK(torch::equal(dst, src * 2));
  // The destination's version advances, as with copy_().
  const auto before = dst._version();
  copy_scaled(dst, torch::ones({3, 4}), 1.0);
  CHECK(dst._version() > before);
}
