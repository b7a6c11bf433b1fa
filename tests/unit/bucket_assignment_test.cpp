#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "bucket/bucket.h"
#include "bucket/bucket_assignment.h"

using ddp::detail::assign_buckets;
using ddp::detail::BucketCaps;
using ddp::detail::reverse_order;
using Buckets = std::vector<std::vector<size_t>>;

namespace {
std::vector<at::Tensor> floats(std::vector<int64_t> numels, at::ScalarType dtype = at::kFloat) {
  std::vector<at::Tensor> out;
  for (auto n : numels) out.push_back(at::zeros({n}, dtype));
  return out;
}
} // namespace

TEST_CASE("buckets follow reverse registration order and close at the caps", "[bucket]") {
  // 4 tensors of 100 floats = 400 bytes each.
  auto t = floats({100, 100, 100, 100});
  // first bucket closes at >= 400 bytes, later ones at >= 800.
  CHECK(assign_buckets(t, reverse_order(4), {400, 800}) == Buckets{{3}, {2, 1}, {0}});
  // A huge cap: one bucket with everything, in reverse order.
  CHECK(assign_buckets(t, reverse_order(4), {1 << 30, 1 << 30}) == Buckets{{3, 2, 1, 0}});
  // A tiny cap: one tensor per bucket.
  CHECK(assign_buckets(t, reverse_order(4), {1, 1}) == Buckets{{3}, {2}, {1}, {0}});
}

TEST_CASE("a tensor bigger than the cap closes its bucket on its own", "[bucket]") {
  auto t = floats({10, 100000, 10});
  CHECK(assign_buckets(t, reverse_order(3), {1000, 1000}) == Buckets{{2, 1}, {0}});
  CHECK(assign_buckets(t, {1, 0, 2}, {1000, 1000}) == Buckets{{1}, {0, 2}});
}

TEST_CASE("dtypes never share a bucket and each dtype has its own first bucket", "[bucket]") {
  std::vector<at::Tensor> t{at::zeros({10}), at::zeros({10}, at::kDouble), at::zeros({10}), at::zeros({10}, at::kDouble)};
  auto buckets = assign_buckets(t, reverse_order(4), {1 << 20, 1 << 20});
  // Ordered by when their last member is expected ready: double {3,1} before float {2,0}.
  CHECK(buckets == Buckets{{3, 1}, {2, 0}});
  // First-bucket cap applies per dtype: 40-byte float tensors, 80-byte doubles.
  CHECK(assign_buckets(t, reverse_order(4), {40, 1 << 20}) == Buckets{{3}, {2}, {1}, {0}});
}

TEST_CASE("tensors at least solo_bytes large get a bucket of their own; the open bucket stays open", "[bucket]") {
  auto t = floats({10, 1000, 10, 1000, 10}); // 40-byte and 4000-byte tensors
  BucketCaps caps{1 << 20, 1 << 20, 4000};
  // Reverse order 4,3,2,1,0: 3 and 1 alone, launched when ready; the small ones together at the end.
  CHECK(assign_buckets(t, reverse_order(5), caps) == Buckets{{3}, {1}, {4, 2, 0}});
  caps.solo_bytes = 0; // off
  CHECK(assign_buckets(t, reverse_order(5), caps) == Buckets{{4, 3, 2, 1, 0}});
}

TEST_CASE("a cap list gives bucket k the k-th cap, the last one repeating", "[bucket]") {
  auto t = floats({100, 100, 100, 100, 100, 100, 100}); // 400 bytes each
  BucketCaps caps{1 << 30, 1 << 30};                     // ignored once the list is set
  caps.list = {400, 1200, 800};
  // Reverse order 6..0: bucket 0 closes at 400 bytes, bucket 1 at 1200, then 800 each.
  CHECK(assign_buckets(t, reverse_order(7), caps) == Buckets{{6}, {5, 4, 3}, {2, 1}, {0}});
  CHECK(caps.cap_of(0) == 400);
  CHECK(caps.cap_of(2) == 800);
  CHECK(caps.cap_of(50) == 800);
  // One entry: every bucket has that cap, the first one too.
  caps.list = {800};
  CHECK(assign_buckets(t, reverse_order(7), caps) == Buckets{{6, 5}, {4, 3}, {2, 1}, {0}});
  // Without a list: first_bytes, then bytes.
  caps.list.clear();
  caps.first_bytes = 400;
  caps.bytes = 1200;
  CHECK(caps.cap_of(0) == 400);
  CHECK(caps.cap_of(1) == 1200);
  CHECK(assign_buckets(t, reverse_order(7), caps) == Buckets{{6}, {5, 4, 3}, {2, 1, 0}});
}

TEST_CASE("a cap list counts the buckets of each dtype and wire group on their own", "[bucket]") {
  // Floats (40 bytes) and doubles (80 bytes), interleaved.
  std::vector<at::Tensor> t{at::zeros({10}), at::zeros({10}, at::kDouble), at::zeros({10}),
                            at::zeros({10}, at::kDouble), at::zeros({10}), at::zeros({10}, at::kDouble)};
  BucketCaps caps{1 << 30, 1 << 30};
  caps.list = {40, 1 << 20};
  // Float bucket 0 = {4} (40 bytes), double bucket 0 = {5} (80 >= 40); the rest of each
  // dtype shares its bucket 1. Buckets are ordered by their last member's position.
  CHECK(assign_buckets(t, reverse_order(6), caps) == Buckets{{5}, {4}, {3, 1}, {2, 0}});
  // Wire groups split the floats further, each group counting its own buckets: float 4
  // closes group 1's bucket 0, float 2 is left in its bucket 1, and float 0, alone in
  // group 0, closes that group's bucket 0 at the 40-byte cap.
  CHECK(assign_buckets(t, reverse_order(6), caps, {0, 0, 1, 0, 1, 0}) == Buckets{{5}, {4}, {2}, {3, 1}, {0}});
}

TEST_CASE("one_bucket caps give one bucket per dtype, large tensors included", "[bucket]") {
  auto t = floats({10, 1000000, 10, 1000000});
  t.push_back(at::zeros({10}, at::kDouble));
  CHECK(assign_buckets(t, reverse_order(5), BucketCaps::one_bucket()) == Buckets{{4}, {3, 2, 1, 0}});
  CHECK(assign_buckets(t, {0, 1, 2, 3, 4}, BucketCaps::one_bucket()) == Buckets{{0, 1, 2, 3}, {4}});
}

TEST_CASE("an empty parameter list gives no buckets", "[bucket]") {
  CHECK(assign_buckets({}, {}, {1, 1}).empty());
}

TEST_CASE("a bucket's views are slots of its flat buffer, shaped like the parameters", "[bucket]") {
  std::vector<at::Tensor> params{at::zeros({2, 3}), at::zeros({4}), at::zeros({5, 1})};
  ddp::detail::Bucket bucket({2, 0}, params);
  CHECK(bucket.flat().numel() == 11);
  CHECK(bucket.view(0).sizes() == params[2].sizes());
  CHECK(bucket.view(1).sizes() == params[0].sizes());
  bucket.view(1).fill_(7);
  CHECK(bucket.flat().narrow(0, 5, 6).eq(7).all().item<bool>());
  CHECK(bucket.flat().narrow(0, 0, 5).eq(0).all().item<bool>());
  CHECK(bucket.pending() == 2);
  CHECK_FALSE(bucket.mark_slot_ready());
  CHECK(bucket.mark_slot_ready());
  CHECK(bucket.ready());
}
