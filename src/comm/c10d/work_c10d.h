// WorkC10d: a c10d::Work seen as a ddp::Work. The c10d work's future completes this one
// (its error becomes a CommError naming the collective and the rank), so waits, timeouts
// (TimeoutError) and the timeline behave as for libddp's own backends. On a CUDA group a
// completed wait also orders the caller's stream after the collective, as c10d's wait does.
// A c10d backend may finish collectives out of issue order (gloo runs several at once);
// libddp's contract is issue order, so a work counts as completed only once the one issued
// before it has (the previous is held weakly: one nobody holds can no longer be observed).
#pragma once

#include <torch/csrc/distributed/c10d/Work.hpp>

#include <memory>
#include <string>

#include <ddp/work.h>

namespace ddp::c10d_adapter {

class WorkC10d final : public Work {
 public:
  // Wraps `work`, issued as collective #sequence of a group whose backend is `backend`.
  static std::shared_ptr<WorkC10d> start(c10::intrusive_ptr<c10d::Work> work, std::string description,
                                         uint64_t sequence, int rank, std::string backend, bool on_cuda,
                                         std::weak_ptr<Work> previous);

  bool is_completed() const override;
  void wait(std::chrono::milliseconds timeout = kNoTimeout) override;

 private:
  WorkC10d(c10::intrusive_ptr<c10d::Work> work, std::string description, uint64_t sequence, int rank,
           std::string backend, bool on_cuda, std::weak_ptr<Work> previous);
  // The message of a failed collective: what, which rank, and c10d's own words.
  std::string failure(const std::string& what) const;

  c10::intrusive_ptr<c10d::Work> work_;
  const std::string backend_;
  const bool on_cuda_;
  bool has_future_ = true;
  const std::weak_ptr<Work> previous_;
};

} // namespace ddp::c10d_adapter
