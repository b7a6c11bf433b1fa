#include "reducer/bucket_cap_autotuner.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "common/check.h"

namespace ddp::detail {
namespace {

BucketCapAutotuner::TimingOverride& override_slot() {
  static BucketCapAutotuner::TimingOverride slot;
  return slot;
}

} // namespace

BucketCapAutotuner::BucketCapAutotuner(const std::optional<BucketCapAutotune>& settings)
    : enabled_(settings.has_value()),
      candidates_mb_(settings ? settings->candidates_mb() : std::vector<double>{}),
      warmup_(settings ? settings->warmup_iterations() : 0),
      timed_(settings ? settings->iterations_per_candidate() : 1),
      samples_(candidates_mb_.size()),
      first_(candidates_mb_.size()),
      last_(candidates_mb_.size()) {}

int64_t BucketCapAutotuner::decision_iteration() const {
  return static_cast<int64_t>(candidates_mb_.size()) * (warmup_ + timed_);
}

std::optional<size_t> BucketCapAutotuner::timed_candidate(int64_t iteration) const {
  if (!tuning() || iteration < 1) return std::nullopt;
  const int64_t period = warmup_ + timed_;
  const int64_t k = (iteration - 1) / period;
  if (k >= static_cast<int64_t>(candidates_mb_.size())) return std::nullopt;
  if ((iteration - 1) % period < warmup_) return std::nullopt; // warming up
  return static_cast<size_t>(k);
}

void BucketCapAutotuner::record(int64_t iteration, Clock::time_point start, Clock::time_point end, int64_t ns) {
  const auto k = timed_candidate(iteration);
  if (!k) return;
  if (samples_[*k].empty()) first_[*k] = start;
  last_[*k] = end;
  samples_[*k].push_back(ns);
}

std::optional<double> BucketCapAutotuner::cap_after(int64_t iteration) const {
  if (!tuning()) return std::nullopt;
  const int64_t period = warmup_ + timed_;
  // Candidate k starts at iteration 1 + k P: its cap is set at the end of iteration k P.
  if (iteration % period != 0) return std::nullopt;
  const int64_t k = iteration / period;
  if (k >= static_cast<int64_t>(candidates_mb_.size())) return std::nullopt;
  return candidates_mb_[static_cast<size_t>(k)];
}

std::vector<int64_t> BucketCapAutotuner::medians() const {
  std::vector<int64_t> out;
  for (std::vector<int64_t> s : samples_) {
    if (s.empty()) {
      // Never timed on this rank (cannot happen on the schedule; kept harmless): counts as
      // the slowest possible, so that it is never chosen for lack of data.
      out.push_back(std::numeric_limits<int64_t>::max());
      continue;
    }
    const auto mid = s.begin() + static_cast<std::ptrdiff_t>((s.size() - 1) / 2);
    std::nth_element(s.begin(), mid, s.end());
    out.push_back(*mid);
  }
  return out;
}

BucketCapAutotuner::Decision BucketCapAutotuner::decide(const std::vector<int64_t>& gathered, int world,
                                                        size_t candidates) {
  DDP_CHECK_EQ(gathered.size(), static_cast<size_t>(world) * candidates);
  DDP_CHECK(candidates > 0, "at least one candidate");
  Decision d;
  d.slowest.assign(candidates, std::numeric_limits<int64_t>::min());
  for (int r = 0; r < world; ++r) {
    for (size_t k = 0; k < candidates; ++k) {
      d.slowest[k] = std::max(d.slowest[k], gathered[static_cast<size_t>(r) * candidates + k]);
    }
  }
  for (size_t k = 1; k < candidates; ++k) {
    if (d.slowest[k] < d.slowest[d.candidate]) d.candidate = k;
  }
  return d;
}

void BucketCapAutotuner::settle(size_t candidate) {
  DDP_CHECK_LT(candidate, candidates_mb_.size());
  chosen_ = candidate;
  settled_ = true;
}

std::string BucketCapAutotuner::describe(const std::optional<BucketCapAutotune>& settings) {
  if (!settings) return "off";
  std::string caps;
  for (double c : settings->candidates_mb()) caps += fmt::format("{}{}", caps.empty() ? "" : ", ", c);
  return fmt::format("candidates_mb=[{}], warmup_iterations={}, iterations_per_candidate={}", caps,
                     settings->warmup_iterations(), settings->iterations_per_candidate());
}

void BucketCapAutotuner::set_timing_override(TimingOverride override) {
  override_slot() = std::move(override);
}

const BucketCapAutotuner::TimingOverride& BucketCapAutotuner::timing_override() {
  return override_slot();
}

} // namespace ddp::detail
