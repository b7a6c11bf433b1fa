#include <ddp/collectives.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <map>
#include <sstream>

#include <ddp/error.h>

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
    pending[g].second->wait(process_group.timeout());
    if (process_group.rank() == root) continue;
    int64_t offset = 0;
    for (auto& t : *members[g]) {
      t.copy_(pending[g].first.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

namespace {

std::string describe(const std::string& name, const at::Tensor& t) {
  std::ostringstream out;
  out << "'" << name << "' shape " << t.sizes() << " dtype " << c10::toString(t.scalar_type());
  return out.str();
}

// FNV-1a: a hash that is the same in every process, unlike std::hash.
uint64_t fnv1a(const std::string& s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::vector<std::string> gather_strings(ProcessGroup& pg, const std::string& mine, int64_t max_len) {
  at::Tensor buf = at::zeros({max_len}, at::kByte);
  std::memcpy(buf.data_ptr(), mine.data(), mine.size());
  std::vector<at::Tensor> outs;
  for (int r = 0; r < pg.size(); ++r) outs.push_back(at::empty({max_len}, at::kByte));
  pg.allgather(outs, buf)->wait(pg.timeout());
  std::vector<std::string> result;
  for (const auto& o : outs) {
    const char* p = static_cast<const char*>(o.data_ptr());
    result.emplace_back(p, strnlen(p, static_cast<size_t>(max_len)));
  }
  return result;
}

} // namespace

void verify_same_tensors(ProcessGroup& process_group, const std::vector<std::pair<std::string, at::Tensor>>& named,
                         const std::string& what) {
  const int world = process_group.size();
  if (world == 1) return;
  std::vector<std::string> lines;
  std::string joined;
  for (const auto& [name, t] : named) {
    lines.push_back(describe(name, t));
    joined += lines.back() + "\n";
  }
  // The common case costs one collective: a fixed-size summary of the whole list.
  at::Tensor summary = at::empty({3}, at::kLong);
  summary[0] = static_cast<int64_t>(named.size());
  summary[1] = static_cast<int64_t>(fnv1a(joined) >> 1);
  summary[2] = static_cast<int64_t>(joined.size());
  std::vector<at::Tensor> summaries;
  for (int r = 0; r < world; ++r) summaries.push_back(at::empty({3}, at::kLong));
  process_group.allgather(summaries, summary)->wait(process_group.timeout());
  bool same = true;
  int64_t max_len = 0;
  for (const auto& s : summaries) {
    same = same && at::equal(s, summaries[0]);
    max_len = std::max(max_len, s[2].item<int64_t>());
  }
  if (same) return;

  // Mismatch: every rank gathers every description and builds the same message.
  std::vector<std::string> all = gather_strings(process_group, joined, max_len + 1);
  std::vector<std::vector<std::string>> per_rank;
  for (const auto& text : all) {
    std::vector<std::string> items;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) items.push_back(line);
    per_rank.push_back(items);
  }
  size_t longest = 0;
  for (const auto& items : per_rank) longest = std::max(longest, items.size());
  for (size_t i = 0; i < longest; ++i) {
    auto item = [&](int r) { return i < per_rank[r].size() ? per_rank[r][i] : std::string("(none: list ends)"); };
    std::vector<int> differing;
    for (int r = 1; r < world; ++r) {
      if (item(r) != item(0)) differing.push_back(r);
    }
    if (differing.empty()) continue;
    std::string detail;
    for (int r : differing) detail += fmt::format("; rank {} has {}", r, item(r));
    std::string counts;
    for (int r = 0; r < world; ++r) counts += fmt::format("{}{}", r ? ", " : "", per_rank[r].size());
    throw ModelMismatchError(fmt::format(
        "[ddp rank {}] the model differs across ranks: {} #{}: rank 0 has {}{} ({} counts per rank: {}). Every rank "
        "must build the same model (same {}s in the same order, same shapes and dtypes) before wrapping it; check "
        "rank-dependent construction code.",
        process_group.rank(), what, i, item(0), detail, what, counts, what));
  }

  throw InternalError(fmt::format("[ddp rank {}] {} summaries differ across ranks but no differing {} was found",
                                  process_group.rank(), what, what));
}

} // namespace ddp
