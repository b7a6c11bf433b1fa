#include "reducer/unused_report.h"

#include <fmt/format.h>

#include "common/logging.h"
#include "reducer/status_row.h"

namespace ddp::detail {

UnusedReport::UnusedReport(const std::vector<std::string>& names, int rank, int world_size)
    : names_(names),
      rank_(rank),
      world_size_(world_size),
      used_by_(names.size(), world_size),
      local_used_(names.size(), 1) {}

std::string UnusedReport::names_of(const std::vector<size_t>& indices) const {
  std::string out;
  for (size_t k = 0; k < indices.size(); ++k) {
    if (k) out += ", ";
    out += names_[indices[k]];
  }
  return out;
}

std::optional<std::string> UnusedReport::message(const std::vector<int64_t>& used_by, const uint8_t* rows,
                                                 const std::vector<char>& local_used, int64_t iteration,
                                                 const Options& options) {
  const size_t n = names_.size();
  std::vector<size_t> global;
  std::vector<size_t> partial;
  for (size_t i = 0; i < n; ++i) {
    if (used_by[i] == 0) global.push_back(i);
    else if (used_by[i] < world_size_) partial.push_back(i);
  }
  if (global.empty() && partial.empty()) return std::nullopt;
  // Which ranks skipped each partially used parameter (the allgathered flags say).
  std::string partial_text;
  if (!partial.empty() && world_size_ > 1 && rows != nullptr) {
    for (size_t k = 0; k < partial.size(); ++k) {
      partial_text += fmt::format("{}{} (ranks {})", k ? ", " : "", names_[partial[k]],
                                  StatusRow::ranks_without(rows, n, world_size_, partial[k]));
    }
  }
  std::string key = names_of(global) + "|" + partial_text;
  if (reported_sets_.count(key) || reported_sets_.size() >= kMaxReportedSets) return std::nullopt;
  reported_sets_.insert(key);
  std::string message = fmt::format("iteration {}: parameters that received no gradient", iteration);
  if (!global.empty()) message += fmt::format("; on every rank (their .grad is left untouched): {}", names_of(global));
  if (!partial.empty()) message += fmt::format("; on some ranks (they contributed zeros): {}", partial_text);
  message += ". The gradients are correct. ";
  if (!options.find_unused_parameters() && !options.static_graph()) {
    message += "For an earlier launch of their buckets set Options::find_unused_parameters = true. ";
  }
  message += "If they are never needed, remove them or freeze them (requires_grad_(false)); register non-trainable "
             "tensors as buffers. Reported once per new set";
  if (reported_sets_.size() == kMaxReportedSets) {
    message += " (no more sets will be reported; DDP_DEBUG=DETAIL logs every iteration)";
  }
  message += ".";
  return message;
}

void UnusedReport::report(const std::vector<int64_t>& used_by, const uint8_t* rows,
                          const std::vector<char>& local_used, int64_t iteration, const Options& options) {
  if (debug_level() >= DebugLevel::kDetail) {
    std::vector<size_t> global;
    std::vector<size_t> local;
    for (size_t i = 0; i < names_.size(); ++i) {
      if (used_by[i] == 0) global.push_back(i);
      if (!local_used[i]) local.push_back(i);
    }
    log(LogLevel::kInfo, rank_, "iteration {}: unused on every rank: [{}]; unused on this rank: [{}]", iteration,
        names_of(global), names_of(local));
  }
  auto text = message(used_by, rows, local_used, iteration, options);
  if (text && rank_ == 0) log(LogLevel::kWarn, rank_, "{}", *text); // every rank knows the same sets
}

void UnusedReport::record(const std::vector<int64_t>& used_by, int64_t iteration) {
  if (iteration < iteration_) return;
  iteration_ = iteration;
  if (&used_by != &used_by_) used_by_ = used_by;
}

std::vector<std::string> UnusedReport::names(bool global) const {
  std::vector<std::string> out;
  for (size_t i = 0; i < names_.size(); ++i) {
    if (global ? used_by_[i] == 0 : !local_used_[i]) out.push_back(names_[i]);
  }
  return out;
}

} // namespace ddp::detail
