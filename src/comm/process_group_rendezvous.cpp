#include "comm/process_group_rendezvous.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cstring>

#include <ddp/error.h>

namespace ddp {

ProcessGroupRendezvous::ProcessGroupRendezvous(std::shared_ptr<ProcessGroup> group) : group_(std::move(group)) {
  if (!group_) throw InvalidArgumentError("[ddp rank ?] ProcessGroupRendezvous: the process group is null");
}

std::vector<char> ProcessGroupRendezvous::exchange(const std::string& key, const std::vector<char>& bytes) {
  // The header carries the length and the key, so a rank that asks for another key
  // (or a blob of another size) is detected instead of broadcasting garbage.
  constexpr int64_t kMaxKey = 256;
  if (static_cast<int64_t>(key.size()) > kMaxKey) {
    throw InvalidArgumentError(fmt::format("[ddp rank {}] rendezvous key \"{}\" is longer than {} bytes", rank(), key,
                                           kMaxKey));
  }
  at::Tensor header = at::zeros({1 + kMaxKey}, at::kLong);
  auto* h = header.data_ptr<int64_t>();
  if (rank() == 0) {
    h[0] = static_cast<int64_t>(bytes.size());
    for (size_t i = 0; i < key.size(); ++i) h[1 + i] = static_cast<unsigned char>(key[i]);
  }
  group_->broadcast(header, 0)->wait(group_->timeout());
  std::string root_key;
  for (int64_t i = 0; i < kMaxKey && h[1 + i] != 0; ++i) root_key.push_back(static_cast<char>(h[1 + i]));
  if (root_key != key) {
    throw CommError(fmt::format(
        "[ddp rank {}] rendezvous over {}: this rank asked for \"{}\" but rank 0 published \"{}\". Every rank must "
        "create its process groups in the same order.",
        rank(), group_->backend(), key, root_key));
  }
  at::Tensor payload = at::empty({h[0]}, at::kByte);
  if (rank() == 0 && !bytes.empty()) std::memcpy(payload.data_ptr(), bytes.data(), bytes.size());
  group_->broadcast(payload, 0)->wait(group_->timeout());
  const auto* data = static_cast<const char*>(payload.data_ptr());
  return std::vector<char>(data, data + payload.numel());
}

} // namespace ddp
