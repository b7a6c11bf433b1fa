// OverlappedOptimizer: the optimizer's own step() run on the parameters of one bucket at
// a time. The parameter groups are narrowed to the bucket's parameters for the call and
// restored after it (a swap of vectors, no copy), so the update is torch::optim's code,
// its state stays in the optimizer keyed as it always is, and the options a scheduler set
// are the ones used. That holds because the supported optimizers update each parameter
// from its own gradient and state alone.
#include <ddp/overlapped_optimizer.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <ddp/error.h>

namespace ddp {

namespace {

// Where a parameter sits in the optimizer's groups.
struct Place {
  size_t group;
  size_t position;
};

// Which optimizers update each parameter from its own gradient and state only.
const char* supported_kind(const torch::optim::Optimizer& optimizer) {
  if (dynamic_cast<const torch::optim::SGD*>(&optimizer)) return "SGD";
  if (dynamic_cast<const torch::optim::AdamW*>(&optimizer)) return "AdamW";
  if (dynamic_cast<const torch::optim::Adam*>(&optimizer)) return "Adam";
  if (dynamic_cast<const torch::optim::RMSprop*>(&optimizer)) return "RMSprop";
  if (dynamic_cast<const torch::optim::Adagrad*>(&optimizer)) return "Adagrad";
  return nullptr;
}

} // namespace

struct OverlappedOptimizer::State {
  // Per parameter of the optimizer, this iteration.
  enum class Mark : uint8_t {
    kNone,
    kReduced, // max_grad_norm: its norm was taken, the update waits for step()
    kUpdated, // updated during the backward
  };
  struct Seen {
    Mark mark = Mark::kNone;
    // The gradient as the update (or the norm) saw it: a change after that is an error
    // (or, for a norm, a reason to take it again). The version counter misses writes
    // through .data() (clip_grad_norm_ scales grad().data()), so three of its values are
    // kept too (CPU: read in place, no ATen call; a GPU gradient keeps the counter only).
    const c10::TensorImpl* grad = nullptr;
    int64_t version = 0;
    std::array<uint64_t, 3> sample{};
    at::Tensor norm;
  };

  std::shared_ptr<torch::optim::Optimizer> optimizer;
  OverlapOptions options;
  int rank = 0;
  std::vector<std::optional<Place>> place_of;       // per reducer parameter
  std::vector<std::vector<std::string>> names;      // per group, per position
  std::vector<std::vector<Seen>> seen;              // per group, per position
  std::vector<std::vector<at::Tensor>> subsets;     // scratch: the narrowed groups
  std::string error;                                // of a callback, thrown by step()
  int64_t updated = 0;                              // this iteration, during the backward
  int64_t updated_last = 0;                         // the last completed iteration

  std::string prefix() const { return fmt::format("[ddp rank {}]", rank); }

  // The first, middle and last elements' bytes of a contiguous CPU gradient (zeros otherwise).
  static std::array<uint64_t, 3> sample_of(const at::Tensor& grad) {
    std::array<uint64_t, 3> out{};
    if (!grad.defined() || !grad.device().is_cpu() || !grad.is_contiguous() || grad.numel() == 0) return out;
    const auto* base = static_cast<const char*>(grad.const_data_ptr());
    const size_t size = std::min<size_t>(grad.element_size(), sizeof(uint64_t));
    const int64_t n = grad.numel();
    const int64_t at[3] = {0, n / 2, n - 1};
    for (size_t k = 0; k < 3; ++k) std::memcpy(&out[k], base + at[k] * grad.element_size(), size);
    return out;
  }
  static void mark_grad(Seen& s, const at::Tensor& grad) {
    s.grad = grad.defined() ? grad.unsafeGetTensorImpl() : nullptr;
    s.version = grad.defined() ? static_cast<int64_t>(grad._version()) : 0;
    s.sample = sample_of(grad);
  }
  static bool grad_unchanged(const Seen& s, const at::Tensor& grad) {
    if (!grad.defined()) return s.grad == nullptr;
    return s.grad == grad.unsafeGetTensorImpl() && s.version == static_cast<int64_t>(grad._version()) &&
           s.sample == sample_of(grad);
  }

  const at::Tensor& parameter(const Place& p) const {
    return optimizer->param_groups()[p.group].params()[p.position];
  }

  void clip_value(const at::Tensor& param) const {
    if (!options.clip_grad_value() || !param.grad().defined()) return;
    const double v = *options.clip_grad_value();
    param.grad().data().clamp_(-v, v);
  }

  // The optimizer's step() over `subsets` only; the groups are restored whatever happens.
  void step_subsets() {
    auto& groups = optimizer->param_groups();
    for (size_t g = 0; g < groups.size(); ++g) std::swap(groups[g].params(), subsets[g]);
    try {
      optimizer->step();
    } catch (...) {
      for (size_t g = 0; g < groups.size(); ++g) std::swap(groups[g].params(), subsets[g]);
      for (auto& s : subsets) s.clear();
      throw;
    }
    for (size_t g = 0; g < groups.size(); ++g) std::swap(groups[g].params(), subsets[g]);
    for (auto& s : subsets) s.clear();
  }

  // The reducer's callback: bucket b's averages are in .grad.
  void on_reduced(const std::vector<size_t>& members) {
    if (!error.empty()) return;
    try {
      for (size_t i : members) {
        if (!place_of[i]) continue;
        const Seen& s = seen[place_of[i]->group][place_of[i]->position];
        if (s.mark != Mark::kNone) {
          error = fmt::format(
              "{} a synchronised backward came before step() was called for the previous one (parameter '{}' "
              "was already updated): with an overlapped optimizer every synchronised backward updates the "
              "parameters, so call step() after each one, and accumulate gradients under no_sync()",
              prefix(), names[place_of[i]->group][place_of[i]->position]);
          return;
        }
      }
      if (options.max_grad_norm()) {
        for (size_t i : members) {
          if (!place_of[i]) continue;
          Seen& s = seen[place_of[i]->group][place_of[i]->position];
          const at::Tensor& grad = parameter(*place_of[i]).grad();
          if (grad.defined()) s.norm = norm_of(grad);
          mark_grad(s, grad);
          s.mark = Mark::kReduced;
        }
        return;
      }
      for (size_t i : members) {
        if (!place_of[i]) continue;
        const at::Tensor& param = parameter(*place_of[i]);
        clip_value(param);
        subsets[place_of[i]->group].push_back(param);
      }
      step_subsets();
      for (size_t i : members) {
        if (!place_of[i]) continue;
        Seen& s = seen[place_of[i]->group][place_of[i]->position];
        mark_grad(s, parameter(*place_of[i]).grad());
        s.mark = Mark::kUpdated;
        updated += 1;
      }
    } catch (const std::exception& e) {
      error = fmt::format("{} the overlapped optimizer's update failed during backward(): {}", prefix(), e.what());
    }
  }

  // What torch::nn::utils::clip_grad_norm_ takes of one gradient.
  at::Tensor norm_of(const at::Tensor& grad) const {
    const double p = options.norm_type();
    if (p == std::numeric_limits<double>::infinity()) return grad.data().abs().max();
    return grad.data().norm(p);
  }

  // max_grad_norm: the total norm over every gradient, then the scaling, as
  // clip_grad_norm_ computes them (the same per-parameter norms, stacked in the
  // optimizer's order).
  void clip_norm() {
    std::vector<at::Tensor> grads;
    std::vector<at::Tensor> norms;
    auto& groups = optimizer->param_groups();
    for (size_t g = 0; g < groups.size(); ++g) {
      for (size_t k = 0; k < groups[g].params().size(); ++k) {
        const at::Tensor& grad = groups[g].params()[k].grad();
        if (!grad.defined()) continue;
        const Seen& s = seen[g][k];
        grads.push_back(grad);
        const bool kept = s.mark == Mark::kReduced && s.norm.defined() && grad_unchanged(s, grad);
        norms.push_back(kept ? s.norm : norm_of(grad));
      }
    }
    if (grads.empty()) return;
    const double p = options.norm_type();
    at::Tensor total;
    if (p == std::numeric_limits<double>::infinity()) {
      total = norms.size() == 1 ? norms[0] : at::max(at::stack(norms));
    } else if (p == 0) {
      total = at::full({}, static_cast<double>(grads.size()));
    } else {
      total = norms.size() == 1 ? norms[0] : at::stack(norms).norm(p);
    }
    const at::Tensor coef = at::clamp(*options.max_grad_norm() / (total + 1e-6), std::nullopt, 1.0);
    for (auto& grad : grads) grad.data().mul_(coef);
  }

  void reset_marks() {
    for (auto& group : seen) {
      for (auto& s : group) s = Seen{};
    }
    updated_last = updated;
    updated = 0;
  }
};

OverlappedOptimizer::OverlappedOptimizer(Reducer& reducer, std::shared_ptr<torch::optim::Optimizer> optimizer,
                                         OverlapOptions options)
    : state_(std::make_shared<State>()) {
  State& s = *state_;
  s.rank = reducer.process_group()->rank();
  if (!optimizer) {
    throw InvalidArgumentError(fmt::format(
        "{} OverlappedOptimizer: the optimizer is null; pass e.g. std::make_shared<torch::optim::Adam>(...)",
        s.prefix()));
  }
  if (!supported_kind(*optimizer)) {
    throw InvalidArgumentError(fmt::format(
        "{} OverlappedOptimizer: this optimizer is not one whose update of a parameter reads only that "
        "parameter's gradient and state (torch::optim::SGD, Adam, AdamW, RMSprop, Adagrad), so it cannot "
        "run bucket by bucket (LBFGS needs every gradient and a closure); step it after backward() instead",
        s.prefix()));
  }
  if (options.clip_grad_value() && !(*options.clip_grad_value() > 0)) {
    throw InvalidArgumentError(fmt::format("{} OverlapOptions::clip_grad_value is {}: it must be > 0", s.prefix(),
                                           *options.clip_grad_value()));
  }
  if (options.max_grad_norm() && !(*options.max_grad_norm() > 0)) {
    throw InvalidArgumentError(fmt::format("{} OverlapOptions::max_grad_norm is {}: it must be > 0", s.prefix(),
                                           *options.max_grad_norm()));
  }
  if (options.max_grad_norm() && options.clip_grad_value()) {
    throw InvalidArgumentError(fmt::format(
        "{} OverlapOptions: both clip_grad_value and max_grad_norm are set; choose one", s.prefix()));
  }
  if (!(options.norm_type() >= 0)) {
    throw InvalidArgumentError(
        fmt::format("{} OverlapOptions::norm_type is {}: it must be >= 0 (or infinity)", s.prefix(),
                    options.norm_type()));
  }
  s.optimizer = std::move(optimizer);
  s.options = std::move(options);

  // Where each of the reducer's parameters sits in the optimizer, and names for errors.
  std::unordered_map<const c10::TensorImpl*, Place> places;
  const auto& groups = s.optimizer->param_groups();
  s.names.resize(groups.size());
  s.seen.resize(groups.size());
  s.subsets.resize(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& params = groups[g].params();
    s.seen[g].resize(params.size());
    for (size_t k = 0; k < params.size(); ++k) {
      places.emplace(params[k].unsafeGetTensorImpl(), Place{g, k});
      s.names[g].push_back(fmt::format("parameter {} of group {}", k, g));
    }
  }
  const auto& parameters = reducer.parameters();
  const auto& names = reducer.parameter_names();
  s.place_of.resize(parameters.size());
  for (size_t i = 0; i < parameters.size(); ++i) {
    auto it = places.find(parameters[i].unsafeGetTensorImpl());
    if (it == places.end()) continue;
    s.place_of[i] = it->second;
    s.names[it->second.group][it->second.position] = names[i];
  }
  State* raw = state_.get(); // the reducer calls it only while state_ lives
  reducer.set_reduced_callback(std::weak_ptr<void>(state_),
                               [raw](size_t, const std::vector<size_t>& members) { raw->on_reduced(members); });
}

OverlappedOptimizer::~OverlappedOptimizer() = default; // the reducer stops calling once state_ is gone

void OverlappedOptimizer::step() {
  State& s = *state_;
  if (!s.error.empty()) {
    std::string error = std::move(s.error);
    s.error.clear();
    s.reset_marks();
    throw InvalidArgumentError(error);
  }
  auto& groups = s.optimizer->param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    for (size_t k = 0; k < groups[g].params().size(); ++k) {
      const State::Seen& seen = s.seen[g][k];
      if (seen.mark != State::Mark::kUpdated || State::grad_unchanged(seen, groups[g].params()[k].grad())) continue;
      const std::string name = s.names[g][k];
      s.reset_marks();
      throw InvalidArgumentError(fmt::format(
          "{} the gradient of '{}' changed between backward() and step() (clip_grad_norm_, zero_grad or an edit "
          "of .grad), but the overlapped optimizer had already updated it during backward(): clip through "
          "OverlapOptions (clip_grad_value, or max_grad_norm, which updates in step()), or step a plain "
          "torch::optim optimizer after backward()",
          s.prefix(), name));
    }
  }
  if (s.options.max_grad_norm()) s.clip_norm();
  for (size_t g = 0; g < groups.size(); ++g) {
    for (size_t k = 0; k < groups[g].params().size(); ++k) {
      if (s.seen[g][k].mark == State::Mark::kUpdated) continue;
      const at::Tensor& param = groups[g].params()[k];
      s.clip_value(param);
      s.subsets[g].push_back(param);
    }
  }
  s.reset_marks();
  s.step_subsets();
}

void OverlappedOptimizer::zero_grad(bool set_to_none) { state_->optimizer->zero_grad(set_to_none); }
torch::optim::Optimizer& OverlappedOptimizer::optimizer() const { return *state_->optimizer; }
const OverlapOptions& OverlappedOptimizer::options() const { return state_->options; }
int64_t OverlappedOptimizer::updated_in_backward() const { return state_->updated_last; }

} // namespace ddp
