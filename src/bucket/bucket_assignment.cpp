#include "bucket/bucket_assignment.h"

#include <algorithm>
#include <limits>
#include <map>
#include <numeric>
#include <tuple>

#include "common/check.h"

namespace ddp::detail {

size_t BucketCaps::cap_of(size_t k) const {
  if (list.empty()) return k == 0 ? first_bytes : bytes;
  return list[std::min(k, list.size() - 1)];
}

BucketCaps BucketCaps::one_bucket() {
  return {std::numeric_limits<size_t>::max(), std::numeric_limits<size_t>::max(), 0};
}

std::vector<size_t> reverse_order(size_t count) {
  std::vector<size_t> order(count);
  std::iota(order.rbegin(), order.rend(), size_t{0});
  return order;
}

std::vector<std::vector<size_t>> assign_buckets(const std::vector<at::Tensor>& tensors,
                                                const std::vector<size_t>& order, BucketCaps caps,
                                                const std::vector<int>& groups) {
  DDP_CHECK_LE(order.size(), tensors.size()); // a tensor left out of `order` gets no bucket
  DDP_CHECK(groups.empty() || groups.size() == tensors.size(), "one group per tensor");
  struct Open {
    std::vector<size_t> members;
    size_t bytes = 0;
    size_t last_position = 0;
    size_t closed_before = 0; // buckets of this kind closed already: the open one's index
  };
  // Key: (device type, device index, dtype, group).
  std::map<std::tuple<int, int, int, int>, Open> open;
  struct Closed {
    std::vector<size_t> members;
    size_t last_position;
  };
  std::vector<Closed> closed;
  for (size_t position = 0; position < order.size(); ++position) {
    const size_t index = order[position];
    DDP_CHECK_LT(index, tensors.size());
    const at::Tensor& t = tensors[index];
    auto key = std::make_tuple(static_cast<int>(t.device().type()), static_cast<int>(t.device().index()),
                               static_cast<int>(t.scalar_type()), groups.empty() ? 0 : groups[index]);
    const size_t bytes = t.numel() * t.element_size();
    if (caps.solo_bytes > 0 && bytes >= caps.solo_bytes) {
      closed.push_back({{index}, position});
      continue;
    }
    Open& bucket = open[key];
    bucket.members.push_back(index);
    bucket.bytes += bytes;
    bucket.last_position = position;
    if (bucket.bytes >= caps.cap_of(bucket.closed_before)) {
      // The position of a bucket's last member is when it can launch.
      closed.push_back({std::move(bucket.members), position});
      bucket.members.clear();
      bucket.bytes = 0;
      bucket.closed_before += 1;
    }
  }
  for (auto& [key, bucket] : open) {
    if (!bucket.members.empty()) {
      closed.push_back({std::move(bucket.members), bucket.last_position});
    }
  }
  std::stable_sort(closed.begin(), closed.end(),
                   [](const Closed& a, const Closed& b) { return a.last_position < b.last_position; });
  std::vector<std::vector<size_t>> result;
  result.reserve(closed.size());
  for (auto& c : closed) result.push_back(std::move(c.members));
  return result;
}

} // namespace ddp::detail
