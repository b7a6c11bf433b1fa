// BucketCapAutotuner: the schedule and the bookkeeping of Options::bucket_cap_autotune
// (docs/configuration.md, "Bucket-cap autotune"). Everything it decides is a function of
// the synchronised iteration count, the same on every rank, so that every rank rebuilds
// its buckets with the same cap at the same forward without a collective; only the choice
// travels (Reducer::Impl::decide_bucket_cap: every rank's medians to rank 0, its choice
// back). no_sync() iterations finalise nothing and are not counted.
//
// The schedule, P = warmup_iterations + iterations_per_candidate, K candidates:
//   iteration 0                      the usual first iteration (its order is a guess)
//   iterations 1 + k P ...           candidate k: warm-up, then timed iterations
//   iteration K P                    the last timed one; the decision is made at its end
// (and at the end of each later synchronised iteration whose ranks were not all ok).
//
// Owned by Reducer::Impl and touched only under its mutex. decide() is a pure function of
// the gathered medians, unit-tested with crafted rows.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ddp/options.h>

namespace ddp::detail {

class BucketCapAutotuner {
 public:
  using Clock = std::chrono::steady_clock;

  // What rank 0 chose from every rank's medians.
  struct Decision {
    size_t candidate = 0;
    std::vector<int64_t> slowest; // per candidate: the largest median over the ranks, ns
  };

  explicit BucketCapAutotuner(const std::optional<BucketCapAutotune>& settings);

  bool enabled() const { return enabled_; }
  // Tuning has not ended (enabled and no choice made yet).
  bool tuning() const { return enabled_ && !settled_; }
  size_t candidates() const { return candidates_mb_.size(); }
  double candidate_mb(size_t k) const { return candidates_mb_[k]; }

  // Records the backward of synchronised `iteration` ([start, end]; `ns` its time, the
  // measured one or a test's override) when it is one of a candidate's timed iterations.
  void record(int64_t iteration, Clock::time_point start, Clock::time_point end, int64_t ns);
  // The cap the buckets take after `iteration` ends (a candidate's first iteration
  // follows), or nullopt.
  std::optional<double> cap_after(int64_t iteration) const;
  // The choice is due at the end of `iteration`.
  bool decides_at(int64_t iteration) const { return tuning() && iteration >= decision_iteration(); }
  int64_t decision_iteration() const;

  // The cap of the candidate timed in `iteration`, or nullopt (warm-up, or not tuning).
  std::optional<double> timed_cap(int64_t iteration) const {
    const auto k = timed_candidate(iteration);
    return k ? std::optional<double>(candidates_mb_[*k]) : std::nullopt;
  }
  // This rank's median backward per candidate, ns (the lower middle value).
  std::vector<int64_t> medians() const;
  // rank 0's choice from `gathered`: world rows of candidates() medians. The candidate
  // whose slowest rank's median is the smallest (the step waits for the slowest rank);
  // on a tie the earlier candidate.
  static Decision decide(const std::vector<int64_t>& gathered, int world, size_t candidates);
  // The choice is made: tuning ends.
  void settle(size_t candidate);
  double chosen_mb() const { return candidates_mb_[chosen_]; }
  // The first and last timed backward of candidate k (for the timeline).
  std::pair<Clock::time_point, Clock::time_point> window(size_t k) const { return {first_[k], last_[k]}; }

  // "candidates_mb=[1, 4], warmup_iterations=2, iterations_per_candidate=6", or "off": the
  // value compared across ranks at construction.
  static std::string describe(const std::optional<BucketCapAutotune>& settings);

  // Test seam: when set, replaces the measured time of every timed backward with
  // override(rank, iteration, cap in MiB) (nullopt: keep the measurement), so that a test
  // decides what each rank "measured" without timing anything. Set it before the ranks
  // start and clear it after they end (not synchronised: read from the ranks' threads).
  using TimingOverride = std::function<std::optional<int64_t>(int rank, int64_t iteration, double cap_mb)>;
  static void set_timing_override(TimingOverride override);
  static const TimingOverride& timing_override();

 private:
  // The candidate whose timed iterations include `iteration`, or nullopt.
  std::optional<size_t> timed_candidate(int64_t iteration) const;

  const bool enabled_;
  const std::vector<double> candidates_mb_;
  const int64_t warmup_;
  const int64_t timed_;
  std::vector<std::vector<int64_t>> samples_; // per candidate
  std::vector<Clock::time_point> first_, last_;
  bool settled_ = false;
  size_t chosen_ = 0;
};

} // namespace ddp::detail
