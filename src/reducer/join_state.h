// JoinState: the reducer's side of ddp::Join (include/ddp/join.h, docs/semantics.md
// "Uneven inputs: Join"): whether Join is armed, its options, the authoritative rank (the
// root of buffer broadcasts and of the final state: the highest active rank, as in
// PyTorch), and what each round of the ranks' {active, reduces} flags means: how many
// ranks still have data, the divisor of the gradients, and the early-termination error.
//
// Owned by Reducer::Impl and touched only under its mutex. tally() and the messages are
// pure functions of the flags, unit-tested with crafted rounds.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ddp::detail {

class JoinState {
 public:
  // One round of the ranks' flags {active, reduces this step}, summed up.
  struct Tally {
    int active = 0;
    bool reduces = false;       // some active rank runs a synchronised backward this step
    int authoritative = -1;     // the highest active rank (-1: none)
    std::string joined;         // "1,2": the ranks that have joined
  };
  static Tally tally(const std::vector<std::pair<bool, bool>>& flags);

  void arm(bool throw_on_early_termination, bool divide_by_initial_world_size);
  // Join went out of scope (or every rank joined): back to the full world.
  void disarm() { armed_ = false; }
  bool armed() const { return armed_; }
  // throw_on_early_termination fired: every rank raised it; join() has nothing to do.
  bool terminated() const { return terminated_; }
  bool throws_on_early_termination() const { return throw_on_early_termination_; }
  // Raising the early termination: Join ends on this rank.
  void terminate() {
    armed_ = false;
    terminated_ = true;
  }
  // The divisor of this step's gradients with `active` ranks out of `world`.
  int divisor(int active, int world) const { return divide_by_initial_world_size_ ? world : active; }

  int authoritative_rank() const { return authoritative_rank_; }
  void set_authoritative_rank(int rank) { authoritative_rank_ = rank; }

  // A Join shadow step runs finalize on this rank with no parameter used by design.
  bool shadowing() const { return shadowing_; }
  void set_shadowing(bool shadowing) { shadowing_ = shadowing; }

  // The error every rank raises at the same step under throw_on_early_termination: seen
  // from an active rank (`joined`: who ran out) and from a rank that joined.
  static std::string early_termination_on_active(const std::string& rank_prefix, const std::string& joined,
                                                 int64_t step);
  static std::string early_termination_on_joined(const std::string& rank_prefix, int active, int64_t step);

 private:
  bool armed_ = false;
  bool terminated_ = false;
  bool shadowing_ = false;
  bool throw_on_early_termination_ = false;
  bool divide_by_initial_world_size_ = true;
  int authoritative_rank_ = 0;
};

} // namespace ddp::detail
