#include <ddp/collectives.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <map>

#include <ddp/error.h>

#include "comm/consistency_check.h"

namespace ddp {

void broadcast_coalesced(ProcessGroup& process_group, const std::vector<at::Tensor>& tensors, int root) {
  if (process_group.size() == 1 || tensors.empty()) return;
  // Group by (device, dtype), keeping the order, so each group is one flat buffer.
  std::map<std::pair<std::string, int>, std::vector<at::Tensor>> groups;
  for (const auto& t : tensors) {
    groups[{t.device().str(), static_cast<int>(t.scalar_type())}].push_back(t.detach());
  }
  std::vector<std::pair<at::Tensor, std::shared_ptr<Work>>> pending;
  std::vector<std::vector<at::Tensor>*> members;
  for (auto& [key, group] : groups) {
    std::vector<at::Tensor> flat_parts;
    flat_parts.reserve(group.size());
    for (const auto& t : group) flat_parts.push_back(t.reshape({-1}));
    at::Tensor flat = at::cat(flat_parts);
    pending.emplace_back(flat, process_group.broadcast(flat, root));
    members.push_back(&group);
  }
  for (size_t g = 0; g < pending.size(); ++g) {
    // A group on a CUDA device (NCCL) orders the copies below after the broadcast on the
    // current stream, without blocking the host; its watchdog owns the deadline.
    if (process_group.device().is_cuda()) {
      pending[g].second->wait();
    } else {
      pending[g].second->wait(process_group.timeout());
    }
    if (process_group.rank() == root) continue;
    int64_t offset = 0;
    for (auto& t : *members[g]) {
      t.copy_(pending[g].first.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

void verify_same_tensors(ProcessGroup& process_group, const std::vector<std::pair<std::string, at::Tensor>>& named,
                         const std::string& what) {
  const auto kind = what == "buffer" ? detail::ConsistencyItem::Kind::kBuffer : detail::ConsistencyItem::Kind::kParameter;
  std::vector<detail::ConsistencyItem> items;
  items.reserve(named.size());
  for (const auto& [name, t] : named) items.push_back({kind, name, detail::describe_tensor(t)});
  detail::verify_consistent(process_group, items);
}

} // namespace ddp
