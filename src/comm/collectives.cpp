#include <ddp/collectives.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cstring>
#include <map>

#include <ddp/error.h>

#include "comm/consistency_check.h"
#include "common/fnv1a.h"

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

namespace {

// FNV-1a over the tensor's bytes, read on the CPU: run once, at wrapping, so a device
// copy costs less than a kernel of our own would to maintain.
int64_t checksum(const at::Tensor& tensor) {
  if (!tensor.defined()) return 0;
  const at::Tensor host = tensor.detach().to(c10::kCPU).contiguous();
  uint64_t h = detail::kFnv1aOffset;
  const auto* bytes = static_cast<const unsigned char*>(host.data_ptr());
  for (size_t i = 0, n = host.nbytes(); i < n; ++i) {
    h ^= bytes[i];
    h *= 1099511628211ull;
  }
  int64_t out;
  std::memcpy(&out, &h, sizeof out);
  return out;
}

} // namespace

void verify_same_values(ProcessGroup& process_group, const std::vector<std::pair<std::string, at::Tensor>>& named,
                        const std::string& what, const std::string& fix) {
  const int world = process_group.size();
  if (world == 1 || named.empty()) return;
  std::vector<int64_t> sums;
  sums.reserve(named.size());
  for (const auto& item : named) sums.push_back(checksum(item.second));
  const auto n = static_cast<int64_t>(sums.size());
  const auto options = at::TensorOptions().dtype(at::kLong).device(process_group.device());
  at::Tensor mine = at::from_blob(sums.data(), {n}, at::kLong).to(options);
  std::vector<at::Tensor> rows;
  for (int r = 0; r < world; ++r) rows.push_back(at::empty({n}, options));
  process_group.allgather(rows, mine)->wait(process_group.timeout());
  std::vector<at::Tensor> host;
  for (const auto& row : rows) host.push_back(row.to(c10::kCPU));
  for (int64_t i = 0; i < n; ++i) {
    std::string differ;
    for (int r = 1; r < world; ++r) {
      if (host[r].data_ptr<int64_t>()[i] != host[0].data_ptr<int64_t>()[i]) {
        differ += fmt::format("{}{}", differ.empty() ? "" : ", ", r);
      }
    }
    if (differ.empty()) continue;
    throw ModelMismatchError(fmt::format("[ddp rank {}] {} '{}' on rank(s) {} differs from rank 0's: {}",
                                         process_group.rank(), what, named[static_cast<size_t>(i)].first, differ,
                                         fix));
  }
}

} // namespace ddp
