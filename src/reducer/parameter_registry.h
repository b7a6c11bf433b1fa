// ParameterRegistry: which Reducer hooks which parameter, process-wide. A module wrapped
// twice would have two sets of hooks on one accumulator, and the idle one would blame the
// user's forward; the second wrapper is refused instead, naming the parameter.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

namespace ddp::detail {

class ParameterRegistry {
 public:
  // The error for the first of `parameters` that another owner holds, or nullopt.
  static std::optional<std::string> find_taken(const std::vector<at::Tensor>& parameters,
                                               const std::vector<std::string>& names, const std::string& rank_prefix);
  // Records `owner` as the holder of `parameters`.
  static void claim(const std::vector<at::Tensor>& parameters, const void* owner);
  // Forgets the parameters `owner` holds.
  static void release(const std::vector<at::Tensor>& parameters, const void* owner);
};

} // namespace ddp::detail
