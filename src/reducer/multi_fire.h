// MultiFire: parameters whose gradient hook runs more than once in one backward: one run
// per graph task that reaches the accumulator, so a reentrant backward (reentrant
// activation checkpointing: a backward function that recomputes its block and calls
// backward inside) over a block that shares a parameter with the rest of the model runs
// that parameter's hook in the nested graph task and again in the outer one
// (docs/semantics.md, "Parameters whose hook fires more than once").
//
// Each run adds its gradient to the parameter's slot while the bucket is not launched. A
// run after the launch is late: its contribution, pre-divided like a slot, is kept here and
// reduced at the end of backward in a follow-up all-reduce per late parameter, which every
// rank issues (a rank without a late contribution sends zeros): every rank learns the late
// parameters from the used-flags row (StatusRow), where each parameter's byte also carries
// the late bit and the number of runs. The reduction is linear, so the average of the
// ranks' sums is the same. The runs of the last synchronised backward are the next one's
// expectation: a slot is marked ready at its last expected run, so after the first
// iteration the bucket waits for it and the follow-up is rarely needed.
//
// Owned by Reducer::Impl and touched only under its mutex; the row encoding and decoding
// are pure (tests/unit/protocol_test.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ddp::detail {

class MultiFire {
 public:
  // --- pure: a parameter's byte in the used-flags row ---
  static constexpr uint8_t kUsedBit = 1;  // got a gradient on this rank (what used_by sums)
  static constexpr uint8_t kLateBit = 2;  // a run came after its bucket was launched
  static constexpr int kRunsShift = 2;    // then the number of runs, capped at kMaxRuns
  static constexpr int64_t kMaxRuns = 63;
  static uint8_t encode(bool used, bool late, int64_t runs);
  static bool used(uint8_t byte) { return (byte & kUsedBit) != 0; }
  static bool late(uint8_t byte) { return (byte & kLateBit) != 0; }
  static int64_t runs(uint8_t byte) { return byte >> kRunsShift; }
  // `rows`: world rows of `stride` bytes, the first n of each the parameters' bytes. Sets
  // late_anywhere[i] where some rank's byte has the late bit; returns whether any has.
  static bool decode_late(const uint8_t* rows, size_t n, int world, size_t stride, std::vector<char>& late_anywhere);

  explicit MultiFire(size_t n);

  // Counts a run of parameter i's hook; returns the runs so far in this backward.
  int64_t count_run(size_t i) { return ++runs_[i]; }
  int64_t runs(size_t i) const { return runs_[i]; }
  // The slot is complete: this run is the last one the previous backward saw.
  bool complete(size_t i) const { return runs_[i] >= expected_[i]; }
  // A late run's `incoming` gradient, times `scale` (the slots' pre-division).
  void add_late(size_t i, const at::Tensor& incoming, double scale, const at::Tensor& like);
  bool any_late() const { return any_late_; }
  // Parameter i's late contribution, zeros where this rank has none (`like`: its slot);
  // the same tensor until reset().
  at::Tensor& late_tensor(size_t i, const at::Tensor& like);
  // Parameter i has a late tensor in this backward (a late run, or late_tensor called).
  bool late_here(size_t i) const { return late_flag_[i] != 0; }
  // This rank's row bytes for `local_used` (0/1 per parameter).
  void encode_row(const std::vector<char>& local_used, std::vector<char>& out) const;
  // The end of a synchronised backward: its runs become the next one's expectation
  // (where the parameter ran at all).
  void learn();
  // A new backward: no runs, nothing late. Late tensors are kept (zeroed on reuse).
  void reset();

  int64_t late_runs() const { return late_runs_; }
  // Per parameter: a synchronised backward ran its hook here, so its runs per backward
  // are known (BucketSet detaches the .grad of the others at a launch).
  const std::vector<char>& settled() const { return settled_; }

 private:
  std::vector<int64_t> runs_;
  std::vector<int64_t> expected_;
  std::vector<char> settled_;
  std::vector<char> late_flag_;
  std::vector<at::Tensor> late_;
  bool any_late_ = false;
  int64_t late_runs_ = 0; // late runs in this backward
};

} // namespace ddp::detail
