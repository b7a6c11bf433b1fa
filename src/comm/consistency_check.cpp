#include "comm/consistency_check.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include <ddp/error.h>

#include "common/fnv1a.h"

namespace ddp::detail {
namespace {

constexpr char kFieldSeparator = '\x1f';

const char* kind_name(ConsistencyItem::Kind kind) {
  switch (kind) {
    case ConsistencyItem::Kind::kOption: return "option";
    case ConsistencyItem::Kind::kParameter: return "parameter";
    case ConsistencyItem::Kind::kBuffer: return "buffer";
  }
  return "item";
}

std::string encode(const std::vector<ConsistencyItem>& items) {
  std::string out;
  for (const auto& item : items) {
    out += kind_name(item.kind);
    out += kFieldSeparator;
    out += item.name;
    out += kFieldSeparator;
    out += item.value;
    out += '\n';
  }
  return out;
}

struct Decoded {
  std::string kind;
  std::string name;
  std::string value;
  bool operator==(const Decoded& o) const { return kind == o.kind && name == o.name && value == o.value; }
  bool operator!=(const Decoded& o) const { return !(*this == o); }
};

std::vector<Decoded> decode(const std::string& text) {
  std::vector<Decoded> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const auto a = line.find(kFieldSeparator);
    const auto b = line.find(kFieldSeparator, a + 1);
    out.push_back({line.substr(0, a), line.substr(a + 1, b - a - 1), line.substr(b + 1)});
  }
  return out;
}

// Every rank's text, through two allgathers on the group's device (lengths, then bytes).
std::vector<std::string> gather_texts(ProcessGroup& pg, const std::string& mine, int64_t max_len) {
  const auto device = pg.device();
  at::Tensor host = at::zeros({max_len}, at::kByte);
  std::memcpy(host.data_ptr(), mine.data(), mine.size());
  at::Tensor buf = host.to(device);
  std::vector<at::Tensor> outs;
  for (int r = 0; r < pg.size(); ++r) outs.push_back(at::empty({max_len}, buf.options()));
  pg.allgather(outs, buf)->wait(pg.timeout());
  std::vector<std::string> result;
  for (const auto& o : outs) {
    at::Tensor h = o.cpu();
    const char* p = static_cast<const char*>(h.data_ptr());
    result.emplace_back(p, strnlen(p, static_cast<size_t>(max_len)));
  }
  return result;
}

std::string describe_item(const Decoded& d) {
  if (d.kind.empty()) return "(none: the list ends)";
  if (d.kind == "option") return d.value;
  return fmt::format("'{}' {}", d.name, d.value);
}

[[noreturn]] void throw_first_difference(ProcessGroup& pg, const std::vector<std::vector<Decoded>>& per_rank) {
  const int world = pg.size();
  size_t longest = 0;
  for (const auto& items : per_rank) longest = std::max(longest, items.size());
  const Decoded none{};
  for (size_t i = 0; i < longest; ++i) {
    auto item = [&](int r) -> const Decoded& { return i < per_rank[r].size() ? per_rank[r][i] : none; };
    std::vector<int> differing;
    for (int r = 1; r < world; ++r) {
      if (item(r) != item(0)) differing.push_back(r);
    }
    if (differing.empty()) continue;
    const Decoded& first = item(0).kind.empty() ? item(differing.front()) : item(0);
    if (first.kind == "option" && std::all_of(differing.begin(), differing.end(), [&](int r) {
          return item(r).kind == "option" && item(r).name == first.name;
        })) {
      std::string values;
      for (int r = 0; r < world; ++r) values += fmt::format("{}rank {} has {}", r ? ", " : "", r, item(r).value);
      throw ModelMismatchError(fmt::format(
          "[ddp rank {}] Options::{} differs across ranks: {}. The options that decide which collectives run and how "
          "large they are (bucket_cap_mb, first_bucket_cap_mb, gradient_as_bucket_view, in_place_min_mb, "
          "broadcast_buffers, static_graph) must be equal on every rank, or the ranks' collectives would not match; "
          "set them from the same configuration on every rank.",
          pg.rank(), first.name, values));
    }
    // Index of the item within its kind on rank 0 (what a user counts in the model).
    const std::string kind = first.kind;
    size_t index = 0;
    for (size_t k = 0; k < i && k < per_rank[0].size(); ++k) index += per_rank[0][k].kind == kind;
    std::string detail;
    for (int r : differing) detail += fmt::format("; rank {} has {}", r, describe_item(item(r)));
    std::string counts;
    for (int r = 0; r < world; ++r) {
      const auto n = std::count_if(per_rank[r].begin(), per_rank[r].end(), [&](const Decoded& d) { return d.kind == kind; });
      counts += fmt::format("{}{}", r ? ", " : "", n);
    }
    throw ModelMismatchError(fmt::format(
        "[ddp rank {}] the model differs across ranks: {} #{}: rank 0 has {}{} ({} counts per rank: {}). Every rank "
        "must build the same model (same {}s in the same order, same shapes and dtypes, the same ones frozen) before "
        "wrapping it; check rank-dependent construction code.",
        pg.rank(), kind, index, describe_item(item(0)), detail, kind, counts, kind));
  }
  throw InternalError(fmt::format("[ddp rank {}] the ranks' construction summaries differ but no differing item was "
                                  "found", pg.rank()));
}

// Some ranks' own set-up failed: each of them throws its own error, the others the first
// failed rank's, so that every rank stops at once.
[[noreturn]] void throw_set_up_failures(ProcessGroup& pg, const std::vector<int>& failed,
                                        const std::vector<std::string>& texts, const std::string& local_error) {
  std::string ranks;
  for (int r : failed) ranks += fmt::format("{}{}", ranks.empty() ? "" : ",", r);
  if (!local_error.empty()) throw InvalidArgumentError(local_error);
  throw InvalidArgumentError(fmt::format(
      "[ddp rank {}] rank(s) {} could not set up the reducer, so every rank stops here instead of waiting for it: "
      "{}",
      pg.rank(), ranks, texts[static_cast<size_t>(failed.front())]));
}

} // namespace

std::string describe_tensor(const at::Tensor& t, bool frozen) {
  std::ostringstream out;
  out << "shape " << t.sizes() << " dtype " << c10::toString(t.scalar_type());
  if (frozen) out << " (frozen)";
  return out.str();
}

void verify_consistent(ProcessGroup& process_group, const std::vector<ConsistencyItem>& items,
                       const std::string& local_error) {
  const int world = process_group.size();
  if (world == 1) {
    if (!local_error.empty()) throw InvalidArgumentError(local_error);
    return;
  }
  const std::string text = local_error.empty() ? encode(items) : local_error;
  // The common case costs one collective: a fixed-size summary of the whole list.
  constexpr int64_t kFields = 4;
  at::Tensor summary = at::empty({kFields}, at::kLong);
  auto* s = summary.data_ptr<int64_t>();
  s[0] = static_cast<int64_t>(items.size());
  s[1] = static_cast<int64_t>(fnv1a(text) >> 1);
  s[2] = static_cast<int64_t>(text.size());
  s[3] = local_error.empty() ? 0 : 1;
  summary = summary.to(process_group.device());
  std::vector<at::Tensor> summaries;
  for (int r = 0; r < world; ++r) summaries.push_back(at::empty({kFields}, summary.options()));
  process_group.allgather(summaries, summary)->wait(process_group.timeout());
  at::Tensor all = at::stack(summaries).cpu();
  const auto* a = all.data_ptr<int64_t>();
  bool same = true;
  bool any_error = false;
  int64_t max_len = 0;
  for (int r = 0; r < world; ++r) {
    same = same && std::equal(a + kFields * r, a + kFields * r + kFields, a);
    any_error = any_error || a[kFields * r + 3] != 0;
    max_len = std::max(max_len, a[kFields * r + 2]);
  }
  if (same && !any_error) return;
  const std::vector<std::string> texts = gather_texts(process_group, text, max_len + 1);
  if (any_error) {
    std::vector<int> failed;
    for (int r = 0; r < world; ++r) {
      if (a[kFields * r + 3] != 0) failed.push_back(r);
    }
    throw_set_up_failures(process_group, failed, texts, local_error);
  }
  std::vector<std::vector<Decoded>> per_rank;
  for (const auto& t : texts) per_rank.push_back(decode(t));
  throw_first_difference(process_group, per_rank);
}

} // namespace ddp::detail
