#include "bucket/reduction_precision.h"

#include <fmt/format.h>
#include <fnmatch.h>

#include <ddp/error.h>

namespace ddp::detail {
namespace {

void check_floating(int rank, c10::ScalarType type, const std::string& option) {
  if (!c10::isFloatingType(type)) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] Options::{} is {}; gradients are summed in floating types: use at::kFloat, at::kDouble, "
        "at::kHalf or at::kBFloat16",
        rank, option, c10::toString(type)));
  }
}

bool matches(const std::string& pattern, const std::string& name) {
  return fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

} // namespace

ReductionPrecision::ReductionPrecision(const Options& options, const std::vector<std::string>& names,
                                       const std::vector<at::Tensor>& parameters, int rank) {
  const auto& overrides = options.wire_dtype_overrides();
  ordered_ = options.reproducible() || options.wire_dtype().has_value() || !overrides.empty();
  if (options.wire_dtype()) check_floating(rank, *options.wire_dtype(), "wire_dtype");
  if (options.accumulate_dtype()) check_floating(rank, *options.accumulate_dtype(), "accumulate_dtype");
  std::vector<bool> used(overrides.size(), false);
  for (size_t k = 0; k < overrides.size(); ++k) {
    check_floating(rank, overrides[k].dtype, fmt::format("wire_dtype_overrides[{}] (\"{}\")", k, overrides[k].pattern));
  }
  per_parameter_.reserve(parameters.size());
  for (size_t i = 0; i < parameters.size(); ++i) {
    const c10::ScalarType own = parameters[i].scalar_type();
    c10::ScalarType wire = options.wire_dtype().value_or(own);
    bool matched = false;
    for (size_t k = 0; k < overrides.size(); ++k) {
      if (!matches(overrides[k].pattern, names[i])) continue;
      if (!matched) wire = overrides[k].dtype; // the first match wins
      matched = true;
      used[k] = true;
    }
    c10::ScalarType accumulate = own;
    if (own == at::kHalf || own == at::kBFloat16) accumulate = at::kFloat;
    if (options.accumulate_dtype()) accumulate = *options.accumulate_dtype();
    if (ordered_ && !c10::isFloatingType(own)) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] parameter '{}' is {}: Options::reproducible and wire_dtype reduce floating gradients only",
          rank, names[i], c10::toString(own)));
    }
    per_parameter_.push_back(OrderedReduce{wire, accumulate, 1});
  }
  for (size_t k = 0; k < overrides.size(); ++k) {
    if (!used[k]) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] Options::wire_dtype_overrides[{}]: the pattern \"{}\" matches no trainable parameter. "
          "Patterns match whole names ('*' for any run of characters), e.g. \"*.bias\"; see named_parameters() "
          "for the names.",
          rank, k, overrides[k].pattern));
    }
  }
}

std::vector<int> ReductionPrecision::bucket_groups() const {
  std::vector<int> groups;
  groups.reserve(per_parameter_.size());
  for (const auto& how : per_parameter_) groups.push_back(static_cast<int>(how.wire));
  return groups;
}

std::string ReductionPrecision::describe(const std::vector<std::string>& names) const {
  std::string out;
  for (size_t i = 0; i < per_parameter_.size(); ++i) {
    out += fmt::format("\n  {}: {} on the wire, {} sums", names[i], c10::toString(per_parameter_[i].wire),
                       c10::toString(per_parameter_[i].accumulate));
  }
  return out;
}

} // namespace ddp::detail
