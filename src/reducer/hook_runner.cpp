#include "reducer/hook_runner.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

#include <ddp/error.h>
#include <ddp/grad_bucket.h>

#include "common/logging.h"

namespace ddp::detail {

HookRunner::HookRunner(std::shared_ptr<ProcessGroup> process_group, int rank, bool on_stream,
                       std::chrono::milliseconds timeout)
    : process_group_(std::move(process_group)), rank_(rank), on_stream_(on_stream), timeout_(timeout) {}

void HookRunner::install(std::shared_ptr<CommHook> hook, bool reproducible) {
  hook_ = std::move(hook);
  group_ = std::make_shared<HookProcessGroup>(process_group_, reproducible);
}

void HookRunner::reset(size_t buckets) {
  futures_.assign(buckets, nullptr);
  failed_bucket_ = -1;
  if (group_) group_->take_issued(); // an interrupted backward's, never recorded
}

void HookRunner::record_timeline(Timeline& timeline, int64_t iteration) {
  if (!group_) return;
  for (const auto& c : group_->take_issued()) {
    if (timeline.enabled() && c.work->is_completed()) {
      timeline.record(Timeline::Kind::kHookCollective, c.bucket, iteration, c.work->start_time(), c.work->end_time(),
                      c.bytes, c.op);
    }
  }
}

std::string HookRunner::failure_message(const std::string& rank_prefix, const BucketSet& buckets, size_t b,
                                        int64_t iteration, const std::string& what) const {
  return fmt::format(
      "{} communication hook '{}' failed on bucket {} ({}) in iteration {}: {}. The gradients of this step are not "
      "averaged on any rank.",
      rank_prefix, name(), b, buckets.members_text(b), iteration, what);
}

std::optional<std::string> HookRunner::run(BucketSet& buckets, size_t b, int64_t iteration) {
  if (futures_.size() != buckets.size()) futures_.resize(buckets.size());
  Bucket& bucket = buckets.bucket(b);
  // A gradient reduced in place is its bucket's buffer (flattened): no copy in or out.
  const at::Tensor buffer = bucket.comm_tensor().view({-1});
  GradBucket grad_bucket(b, b + 1 == buckets.size(), buffer, buckets.names_of_bucket(b), buckets.shapes_of_bucket(b),
                         *group_, iteration);
  const int64_t issued = group_->collectives();
  group_->set_bucket(static_cast<int64_t>(b));
  std::string failure;
  try {
    futures_[b] = hook_->run(grad_bucket);
    if (!futures_[b]) throw InvalidArgumentError("it returned a null future");
    return std::nullopt;
  } catch (const std::exception& e) {
    failure = e.what();
  }
  futures_[b] = CommFuture::ready(buffer);
  if (group_->collectives() != issued) return failure; // cannot be paired again: see docs/semantics.md
  // It issued nothing: the peers' hooks (which may not have thrown) issued this bucket's
  // collectives, and the same hook on zeros issues the same ones.
  at::Tensor(buffer).zero_();
  try {
    auto again = hook_->run(grad_bucket);
    if (again) futures_[b] = std::move(again);
  } catch (const std::exception&) {
    // It fails on zeros too: most likely on every rank alike, which keeps them paired.
  }
  return failure;
}

void HookRunner::complete(BucketSet& buckets, bool interrupted, std::vector<Failure>& failures) {
  using Clock = std::chrono::steady_clock;
  // One deadline for the whole section: a peer that never completes it costs one timeout,
  // not one per bucket (MPI completes in order, so every later wait would run out too).
  const bool bounded = !on_stream_ && timeout_ < std::chrono::hours(24 * 365);
  const auto deadline = bounded ? Clock::now() + timeout_ : Clock::time_point::max();
  auto remaining = [&]() -> std::chrono::milliseconds {
    if (!bounded) return wait_timeout();
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return std::max(left, std::chrono::milliseconds(1));
  };
  // A failure of the hook is reported (or, for an interrupted section, only logged: that
  // step is not averaged anyway); the group's own failure ends the wait.
  auto hook_failed = [&](size_t b, const std::string& what) {
    if (interrupted) {
      log(LogLevel::kWarn, rank_,
          "communication hook '{}' failed on bucket {} while completing an interrupted backward: {}", name(), b, what);
      return;
    }
    failures.push_back({b, what});
  };
  for (size_t b = 0; b < futures_.size(); ++b) {
    if (!futures_[b]) continue;
    group_->set_bucket(static_cast<int64_t>(b)); // what its continuations issue is bucket b's
    try {
      futures_[b]->advance(remaining());
    } catch (const CommError&) {
      throw; // the group failed: not the hook's doing
    } catch (const std::exception& e) {
      hook_failed(b, e.what());
      futures_[b] = CommFuture::ready(buckets.bucket(b).comm_tensor().view({-1}));
    }
  }
  for (size_t b = 0; b < futures_.size(); ++b) {
    if (!futures_[b]) continue;
    group_->set_bucket(static_cast<int64_t>(b));
    Bucket& bucket = buckets.bucket(b);
    std::string problem;
    try {
      at::Tensor value = futures_[b]->wait(remaining());
      const at::Tensor flat = bucket.comm_tensor().view({-1});
      if (!value.defined() || value.numel() != flat.numel() || value.scalar_type() != flat.scalar_type() ||
          value.device() != flat.device()) {
        problem = value.defined()
                      ? fmt::format("its result has {} elements of {} on {}; the bucket has {} of {} on {}",
                                    value.numel(), c10::toString(value.scalar_type()), value.device().str(),
                                    flat.numel(), c10::toString(flat.scalar_type()), flat.device().str())
                      : "its result is an undefined tensor";
      } else if (!value.is_same(flat)) {
        flat.copy_(value.reshape({-1}));
      }
    } catch (const CommError&) {
      throw;
    } catch (const std::exception& e) {
      problem = e.what();
    }
    if (!problem.empty()) hook_failed(b, problem);
  }
}

} // namespace ddp::detail
