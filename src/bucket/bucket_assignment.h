// Which parameters share a bucket. Pure function of sizes, dtypes, devices and an
// expected gradient-ready order, so that every rank computes the same assignment.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <vector>

namespace ddp::detail {

struct BucketCaps {
  size_t first_bytes; // cap of the first bucket of each (dtype, device)
  size_t bytes;       // cap of every later bucket
  size_t solo_bytes = 0; // tensors at least this large get a bucket of their own (0: never)
  // Non-empty: the cap of bucket k of each (dtype, device, group) is list[k], the last
  // entry repeating, instead of first_bytes then bytes (Options::bucket_cap_mb_list).
  std::vector<size_t> list = {};

  // The cap of the k-th bucket (0-based) of one (dtype, device, group).
  size_t cap_of(size_t k) const;
  // No cap and no solo buckets: one bucket per (dtype, device, group), which is what the
  // first iteration uses under Options::first_iteration_one_bucket.
  static BucketCaps one_bucket();
};

// Walks `order` (parameter indices in the order their gradients are expected to be
// ready; a tensor left out gets no bucket: the reducer's sparse gradients), grouping by (dtype, device); a bucket is closed once it holds at least its
// cap, so a tensor larger than the cap ends up in a bucket of its own size or more.
// A tensor of at least caps.solo_bytes gets a bucket to itself and leaves the open
// bucket of its kind open (the reducer can then reduce it in place).
// Buckets are returned in the order they are expected to become ready (position of
// their last member in `order`); members keep their `order` order. `groups` (empty, or
// one per tensor) splits buckets further: only tensors of one group share a bucket (the
// reducer's wire dtypes).
std::vector<std::vector<size_t>> assign_buckets(const std::vector<at::Tensor>& tensors,
                                                const std::vector<size_t>& order, BucketCaps caps,
                                                const std::vector<int>& groups = {});

// The initial order: reverse registration order, a good guess of the backward's order.
std::vector<size_t> reverse_order(size_t count);

} // namespace ddp::detail
