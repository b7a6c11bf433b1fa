#include "reducer/construction_check.h"

#include <fmt/format.h>

#include <algorithm>
#include <unordered_set>

#include <ddp/error.h>

#include "bucket/reduction_precision.h"
#include "reducer/bucket_cap_autotuner.h"
#include "comm/consistency_check.h"
#include "common/env.h"
#include "common/logging.h"
#include "reducer/parameter_registry.h"

namespace ddp::detail {
namespace {

const char* step_check_name(Options::StepCheck mode) {
  switch (mode) {
    case Options::StepCheck::kAuto: return "auto";
    case Options::StepCheck::kStrict: return "strict";
    case Options::StepCheck::kDeferred: return "deferred";
  }
  return "?";
}

// "[1, 4, 25]" ("none" when empty).
std::string cap_list_text(const std::vector<double>& caps) {
  if (caps.empty()) return "none";
  std::string out = "[";
  for (size_t k = 0; k < caps.size(); ++k) out += fmt::format("{}{}", k == 0 ? "" : ", ", caps[k]);
  return out + "]";
}

// "*.bias=Float, *norm*=Float" ("none" without any).
std::string wire_overrides_text(const std::vector<Options::WireDtype>& overrides) {
  if (overrides.empty()) return "none";
  std::string out;
  for (const auto& o : overrides) out += fmt::format("{}{}={}", out.empty() ? "" : ", ", o.pattern, c10::toString(o.dtype));
  return out;
}

// What every rank must agree on before the first collective of the reducer: the options
// that shape the collective sequence, every parameter (frozen ones are broadcast too) and
// every buffer.
std::vector<ConsistencyItem> construction_items(const Options& o, const Reducer::NamedParameters& parameters,
                                                const Reducer::NamedParameters& buffers) {
  using Kind = ConsistencyItem::Kind;
  std::vector<ConsistencyItem> items = {
      {Kind::kOption, "bucket_cap_mb", fmt::format("{}", o.bucket_cap_mb())},
      {Kind::kOption, "first_bucket_cap_mb", fmt::format("{}", o.first_bucket_cap_mb())},
      // Different caps pair collectives of different sizes.
      {Kind::kOption, "bucket_cap_mb_list", cap_list_text(o.bucket_cap_mb_list())},
      {Kind::kOption, "first_iteration_one_bucket", o.first_iteration_one_bucket() ? "true" : "false"},
      // Ranks that tune differently would rebuild at different forwards.
      {Kind::kOption, "bucket_cap_autotune", BucketCapAutotuner::describe(o.bucket_cap_autotune())},
      {Kind::kOption, "in_place_min_mb", fmt::format("{}", o.in_place_min_mb())},
      {Kind::kOption, "gradient_as_bucket_view", o.gradient_as_bucket_view() ? "true" : "false"},
      {Kind::kOption, "broadcast_buffers", o.broadcast_buffers() ? "true" : "false"},
      {Kind::kOption, "static_graph", o.static_graph() ? "true" : "false"},
      // It sizes the section headers (a bitmap of unused parameters) and skips buckets.
      {Kind::kOption, "skip_all_reduce_unused_params", o.skip_all_reduce_unused_params() ? "true" : "false"},
      // A rank that broadcasts its state while another checks checksums would pair a
      // broadcast with an allgather.
      {Kind::kOption, "init_sync", o.init_sync() ? "true" : "false"},
      // Strict and deferred ranks would go on differently after a rank's error.
      {Kind::kOption, "step_check", step_check_name(o.step_check())},
      // An ordered sum pairs an all-to-all and an allgather with a peer's all-reduce
      // otherwise; different dtypes would exchange different byte counts.
      {Kind::kOption, "reproducible", o.reproducible() ? "true" : "false"},
      {Kind::kOption, "wire_dtype", o.wire_dtype() ? c10::toString(*o.wire_dtype()) : "unset"},
      {Kind::kOption, "accumulate_dtype", o.accumulate_dtype() ? c10::toString(*o.accumulate_dtype()) : "unset"},
      {Kind::kOption, "wire_dtype_overrides", wire_overrides_text(o.wire_dtype_overrides())},
  };
  const auto& sparse = o.expect_sparse_gradients();
  for (const auto& [name, t] : parameters) {
    std::string description = t.defined() ? describe_tensor(t, !t.requires_grad()) : "undefined";
    // A rank reducing it sparse would pair a gather with another rank's bucket all-reduce.
    if (std::find(sparse.begin(), sparse.end(), name) != sparse.end()) {
      description += " with a sparse gradient (Embedding/EmbeddingBag sparse(true), or Options::expect_sparse_gradients)";
    }
    items.push_back({Kind::kParameter, name, std::move(description)});
  }
  for (const auto& [name, t] : buffers) {
    items.push_back({Kind::kBuffer, name, t.defined() ? describe_tensor(t) : "undefined"});
  }
  return items;
}

} // namespace

Reducer::NamedParameters ConstructionCheck::trainable(const Reducer::NamedParameters& parameters, int rank) {
  Reducer::NamedParameters kept;
  std::unordered_set<const void*> seen_tensors;
  std::unordered_set<std::string> seen_names;
  for (const auto& [name, tensor] : parameters) {
    if (!tensor.defined()) {
      throw InvalidArgumentError(fmt::format("[ddp rank {}] parameter '{}' is an undefined tensor", rank, name));
    }
    if (!tensor.requires_grad()) continue; // frozen: nothing to reduce (but checked across ranks)
    if (!tensor.is_leaf()) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] parameter '{}' is not a leaf tensor (it has a grad_fn), so it has no gradient "
          "accumulator to hook; pass the parameter itself, not a result computed from it",
          rank, name));
    }
    if (tensor.is_sparse() || tensor.layout() != c10::kStrided) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] parameter '{}' has a non-strided layout; libddp reduces dense parameters only", rank, name));
    }
    if (!seen_tensors.insert(tensor.unsafeGetTensorImpl()).second) continue; // shared: reduce once
    if (!seen_names.insert(name).second) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] two different parameters are named '{}'; names identify parameters in errors and across "
          "ranks, so they must be unique",
          rank, name));
    }
    if (!kept.empty() && tensor.device() != kept.front().second.device()) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] parameter '{}' is on {} but '{}' is on {}; one process drives one device: move the whole "
          "module to one device (module->to(device)) before wrapping it",
          rank, name, tensor.device().str(), kept.front().first, kept.front().second.device().str()));
    }
    kept.emplace_back(name, tensor);
  }
  if (kept.empty()) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] no parameter requires grad, so there is nothing to reduce: check that the module has "
        "parameters and that they are not all frozen (requires_grad=false)",
        rank));
  }
  return kept;
}

Options ConstructionCheck::resolve(Options options, int rank) {
  auto bad = [rank](const std::string& field, double value, const char* rule) {
    return InvalidArgumentError(
        fmt::format("[ddp rank {}] Options::{} = {} is invalid: it must be {}", rank, field, value, rule));
  };
  if (!(options.bucket_cap_mb() > 0)) throw bad("bucket_cap_mb", options.bucket_cap_mb(), "> 0 (MiB)");
  if (!(options.first_bucket_cap_mb() > 0)) throw bad("first_bucket_cap_mb", options.first_bucket_cap_mb(), "> 0 (MiB)");
  const std::vector<double>& cap_list = options.bucket_cap_mb_list();
  for (size_t k = 0; k < cap_list.size(); ++k) {
    if (!(cap_list[k] > 0)) {
      throw bad(fmt::format("bucket_cap_mb_list[{}]", k), cap_list[k], "> 0 (MiB), like every cap in the list");
    }
  }
  if (const auto& tune = options.bucket_cap_autotune()) {
    if (!cap_list.empty()) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] Options::bucket_cap_autotune and Options::bucket_cap_mb_list are both set: autotune tries "
          "values of bucket_cap_mb, which a cap list replaces. Set one of them.",
          rank));
    }
    if (tune->candidates_mb().empty()) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] Options::bucket_cap_autotune has no candidates_mb: give at least one cap (MiB) to try", rank));
    }
    for (size_t k = 0; k < tune->candidates_mb().size(); ++k) {
      if (!(tune->candidates_mb()[k] > 0)) {
        throw bad(fmt::format("bucket_cap_autotune.candidates_mb[{}]", k), tune->candidates_mb()[k], "> 0 (MiB)");
      }
    }
    if (tune->warmup_iterations() < 0) {
      throw bad("bucket_cap_autotune.warmup_iterations", static_cast<double>(tune->warmup_iterations()), ">= 0");
    }
    if (tune->iterations_per_candidate() < 1) {
      throw bad("bucket_cap_autotune.iterations_per_candidate", static_cast<double>(tune->iterations_per_candidate()),
                ">= 1");
    }
  }
  if (!(options.in_place_min_mb() >= 0 || options.in_place_min_mb() == -1.0)) {
    throw bad("in_place_min_mb", options.in_place_min_mb(), ">= 0 (MiB), or -1 for the default");
  }
  if (options.timeout().count() <= 0) {
    throw bad("timeout", static_cast<double>(options.timeout().count()), "> 0 milliseconds");
  }
  // DDP_TIMEOUT_S replaces the default timeout (a timeout set in code wins); DDP_TIMELINE
  // and DDP_STEP_CHECK replace their fields whenever set (docs/configuration.md). A bad
  // value is an error naming the variable, and, like every check here, travels in the
  // construction exchange so that every rank stops.
  options = Env(rank).apply_to(std::move(options));
  // DDP_LOG_LEVEL and DDP_DEBUG too: a process group made without init_process_group
  // (a test's, a user's own) has not read them yet.
  reload_log_settings(rank);
  return options;
}

ConstructionCheck::Result ConstructionCheck::run(const Reducer::NamedParameters& parameters,
                                                 const Reducer::NamedParameters& buffers, ProcessGroup& process_group,
                                                 Options options) {
  const int rank = process_group.rank();
  Result result;
  std::string error;
  try {
    result.trainable = trainable(parameters, rank);
    result.options = resolve(std::move(options), rank);
    std::vector<at::Tensor> tensors;
    std::vector<std::string> names;
    for (const auto& [name, t] : result.trainable) {
      names.push_back(name);
      tensors.push_back(t);
    }
    if (auto taken = ParameterRegistry::find_taken(tensors, names, fmt::format("[ddp rank {}]", rank))) {
      throw InvalidArgumentError(*taken);
    }
    ReductionPrecision(result.options, names, tensors, rank); // its errors travel like the others
    for (const std::string& name : result.options.expect_sparse_gradients()) {
      if (std::find(names.begin(), names.end(), name) == names.end()) {
        throw InvalidArgumentError(fmt::format(
            "[ddp rank {}] Options::expect_sparse_gradients names '{}', which is not a parameter that requires grad "
            "(a frozen one, or a misspelt name): list the trainable parameters whose gradients are sparse, by their "
            "names in named_parameters()",
            rank, name));
      }
    }

  } catch (const InvalidArgumentError& e) {
    error = e.what();
  }
  if (process_group.size() == 1 && !error.empty()) throw InvalidArgumentError(error);
  // One collective: every rank's local result, options, every parameter (frozen too) and
  // every buffer. A rank with an error sends it instead of its options.
  verify_consistent(process_group, construction_items(result.options, parameters, buffers), error);
  return result;
}

} // namespace ddp::detail
