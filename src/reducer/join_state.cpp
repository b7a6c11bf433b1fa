#include "reducer/join_state.h"

#include <fmt/format.h>

namespace ddp::detail {

JoinState::Tally JoinState::tally(const std::vector<std::pair<bool, bool>>& flags) {
  Tally t;
  for (size_t r = 0; r < flags.size(); ++r) {
    if (flags[r].first) {
      t.active += 1;
      t.reduces = t.reduces || flags[r].second;
      t.authoritative = static_cast<int>(r);
    } else {
      t.joined += fmt::format("{}{}", t.joined.empty() ? "" : ",", r);
    }
  }
  return t;
}

void JoinState::arm(bool throw_on_early_termination, bool divide_by_initial_world_size) {
  armed_ = true;
  terminated_ = false;
  throw_on_early_termination_ = throw_on_early_termination;
  divide_by_initial_world_size_ = divide_by_initial_world_size;
}

std::string JoinState::early_termination_on_active(const std::string& rank_prefix, const std::string& joined,
                                                   int64_t step) {
  return fmt::format(
      "{} rank(s) {} ran out of inputs before training step {} (ddp::Join with throw_on_early_termination): every "
      "rank raises this at the same step. Catch it on every rank to end the epoch, or set "
      "throw_on_early_termination = false to let the ranks with data go on.",
      rank_prefix, joined, step);
}

std::string JoinState::early_termination_on_joined(const std::string& rank_prefix, int active, int64_t step) {
  return fmt::format(
      "{} this rank ran out of inputs before training step {} while {} rank(s) still had data (ddp::Join with "
      "throw_on_early_termination): every rank raises this at the same step.",
      rank_prefix, step, active);
}

} // namespace ddp::detail
