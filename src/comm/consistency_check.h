// The construction-time check that every rank sets up the same collective sequence:
// the options that shape it, every parameter (frozen ones too: they are broadcast) and
// every buffer. One small allgather in the common case; on a mismatch every rank gathers
// every rank's list and throws the same ModelMismatchError naming the first difference,
// each rank's value and the fix.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include <ddp/process_group.h>

namespace ddp::detail {

struct ConsistencyItem {
  enum class Kind { kOption, kParameter, kBuffer };
  Kind kind;
  std::string name;  // "bucket_cap_mb", "fc1.weight"
  std::string value; // "25", "shape [4, 4] dtype Float"
};

// "shape [4, 4] dtype Float", plus " (frozen)" for a parameter that needs no gradient.
std::string describe_tensor(const at::Tensor& tensor, bool frozen = false);

// Collective: every rank must call it with its own list at the same point. Returns on
// agreement, throws ModelMismatchError (the same message on every rank) otherwise.
// `local_error`: this rank's own set-up failed (its message); it travels in the same
// exchange, so every rank throws InvalidArgumentError at once naming the failed rank(s)
// and their message, instead of the peers waiting for the timeout.
void verify_consistent(ProcessGroup& process_group, const std::vector<ConsistencyItem>& items,
                       const std::string& local_error = std::string());

} // namespace ddp::detail
