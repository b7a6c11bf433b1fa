// UnusedReport: which parameters received no gradient, on every rank and on this one, in
// the last synchronised iteration (Reducer::unused_parameters()), and the warning that
// names them once per new set (docs/semantics.md, "Unused parameters").
//
// Owned by Reducer::Impl and touched only under its mutex. message() is a pure function
// of the used counts and flag rows, unit-tested with crafted rows.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <ddp/options.h>

namespace ddp::detail {

class UnusedReport {
 public:
  static constexpr size_t kMaxReportedSets = 64;

  UnusedReport(const std::vector<std::string>& names, int rank, int world_size);

  // The warning for one iteration, or nullopt when every parameter was used on every rank
  // or this set was reported before. `used_by[i]`: how many ranks used parameter i;
  // `rows`: the gathered flag rows (world x (n + StatusRow::kStatusBytes)), or null;
  // `local_used`: this rank's flags. Remembers the set (so call it once per iteration).
  std::optional<std::string> message(const std::vector<int64_t>& used_by, const uint8_t* rows,
                                     const std::vector<char>& local_used, int64_t iteration, const Options& options);
  // Logs message() (rank 0 only: every rank knows the same sets), and every iteration's
  // sets at DDP_DEBUG=DETAIL.
  void report(const std::vector<int64_t>& used_by, const uint8_t* rows, const std::vector<char>& local_used,
              int64_t iteration, const Options& options);

  // The used counts of `iteration`, unless a later iteration's are already recorded
  // (deferred reads arrive in order, strict ones at once).
  void record(const std::vector<int64_t>& used_by, int64_t iteration);
  std::vector<int64_t>& used_by() { return used_by_; }
  // This rank's flags of the last synchronised backward.
  std::vector<char>& local_used() { return local_used_; }
  // Names unused on every rank (`global`) or on this rank.
  std::vector<std::string> names(bool global) const;
  std::string names_of(const std::vector<size_t>& indices) const;

 private:
  const std::vector<std::string>& names_;
  const int rank_;
  const int world_size_;
  std::vector<int64_t> used_by_;  // per parameter: how many ranks used it (last iteration)
  std::vector<char> local_used_;  // per parameter: used on this rank (last iteration)
  int64_t iteration_ = -1;        // the iteration used_by_ describes
  std::set<std::string> reported_sets_;
};

} // namespace ddp::detail
