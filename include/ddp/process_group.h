// The one boundary between the reducer and the communication libraries. The reducer
// and DistributedDataParallel see only this interface; MPI, NCCL and PyTorch's c10d
// process groups (gloo, c10d-nccl, or any group through ddp::from_c10d) live behind it in
// src/comm/ and are created by init_process_group().
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <ddp/defaults.h>
#include <ddp/work.h>

namespace ddp {

// How ProcessGroup::allreduce_ordered adds (docs/semantics.md, "Reproducible reduction").
struct OrderedReduce {
  // What travels: each rank's values are cast to it before they are sent, and the sums
  // are cast to it before they are sent back.
  c10::ScalarType wire;
  // What each element's sum is computed in.
  c10::ScalarType accumulate;
  // The sum is divided by this (in `accumulate`) before it travels back; 1: a plain sum.
  int64_t divisor = 1;
};

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "mpi", "nccl", "gloo", or "c10d:<name>" for another c10d backend (e.g. "c10d:nccl").
  virtual std::string backend() const = 0;
  // Where this group's collectives take their tensors: CPU for MPI, the rank's GPU for
  // NCCL. Every collective libddp issues on its own behalf (verification, headers, used
  // flags, module state) uses tensors on this device.
  virtual c10::Device device() const { return c10::Device(c10::kCPU); }

  // Every call is asynchronous and returns at once; collectives run in issue order.
  // Tensors must be contiguous and stay alive (and untouched) until wait() returns.

  // In-place sum across ranks.
  virtual std::shared_ptr<Work> allreduce(at::Tensor tensor) = 0;
  // In place: every rank receives root's tensor.
  virtual std::shared_ptr<Work> broadcast(at::Tensor tensor, int root) = 0;
  // outputs[r] receives rank r's input; every output has the input's shape and dtype.
  virtual std::shared_ptr<Work> allgather(std::vector<at::Tensor> outputs, at::Tensor input) = 0;
  // Blocks until every rank has reached it.
  virtual void barrier() = 0;

  // In-place sum whose bits do not depend on the tensor's length, the message sizes or
  // the library's algorithm: every element becomes
  //   wire(((acc(x_0) + acc(x_1)) + ... + acc(x_{n-1})) / divisor)
  // with x_r rank r's element cast to `how.wire`, acc() a cast to `how.accumulate`, the
  // adds in rank order, and the result cast back to the tensor's dtype. The same bits on
  // every rank. The built-in groups run it as an owner-sums exchange (rank j adds the
  // j-th of n chunks, then an allgather returns the sums: 2 (n - 1) / n of the tensor on
  // the wire, as a ring all-reduce sends). This default, for other groups, allgathers
  // the whole tensor and adds on every rank (n times the bytes) and blocks until done.
  virtual std::shared_ptr<Work> allreduce_ordered(at::Tensor tensor, OrderedReduce how);

  // Gives up on the collectives in flight, because the caller knows their peers are gone
  // or out of step (they may never complete), so that no thread or stream waits on them;
  // the group cannot be used afterwards. `reason` is what later calls report. NCCL aborts
  // its communicator; MPI cannot end one collective and does nothing (its exit path
  // ends the job instead).
  virtual void abort(const std::string& reason) {}

  // The timeout that blocking helpers (barrier, verification) wait for.
  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

 private:
  std::chrono::milliseconds timeout_ = kDefaultTimeout;
};

} // namespace ddp
