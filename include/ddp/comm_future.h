// ddp::CommFuture: the asynchronous result of a communication hook for one bucket: a
// collective (a ddp::Work) and the tensor it writes, or a chain of such steps, each started
// from the previous one's value (PowerSGD: reduce P, then compute and reduce Q).
//
// When continuations run: the reducer advances every bucket's future in bucket order at
// the end of the backward, and then waits for each, so the collectives a continuation
// issues come in the same order on every rank. A continuation never runs on a
// communication thread, and never under a lock of the reducer.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <exception>
#include <functional>
#include <memory>

#include <ddp/work.h>

namespace ddp {

class CommFuture : public std::enable_shared_from_this<CommFuture> {
 public:
  using Continuation = std::function<std::shared_ptr<CommFuture>(const at::Tensor& value)>;
  using Map = std::function<at::Tensor(const at::Tensor& value)>;

  // Already complete with `value` (a hook that sends nothing, or sent it already).
  static std::shared_ptr<CommFuture> ready(at::Tensor value);
  // Completes with `value` when `work` completes (`value`: the tensor it writes).
  static std::shared_ptr<CommFuture> of(std::shared_ptr<Work> work, at::Tensor value);

  // A future of what `next` returns for this one's value. `next` may issue collectives.
  std::shared_ptr<CommFuture> then(Continuation next);
  // A future of `map`'s result on this one's value (decompression, a copy): no collective.
  std::shared_ptr<CommFuture> then_map(Map map);

  // Runs the earliest continuation of the chain not yet run, waiting for its input, so
  // that its collectives are issued; does not wait for them. `timeout`: as in Work::wait (kNoTimeout on a CUDA
  // group orders the stream instead of blocking the host).
  void advance(std::chrono::milliseconds timeout = Work::kNoTimeout);
  // Runs every continuation and waits; returns the final value, or rethrows.
  at::Tensor wait(std::chrono::milliseconds timeout = Work::kNoTimeout);

 private:
  CommFuture() = default;
  // advance(); true when it ran a continuation.
  bool advance_one(std::chrono::milliseconds timeout);
  std::shared_ptr<Work> work_;         // a leaf: what it waits for (null when ready)
  at::Tensor value_;                   // a leaf: its value
  std::shared_ptr<CommFuture> parent_; // a chained step: what it starts from
  Continuation next_;
  std::shared_ptr<CommFuture> result_; // a chained step once advanced: next_'s future
  std::exception_ptr error_;           // a chained step whose continuation (or input) failed
};

} // namespace ddp
