#include "reducer/gradient_hooks.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>

#include "common/check.h"

namespace ddp::detail {

GradientHooks::~GradientHooks() { remove(); }

void GradientHooks::remove() {
  for (size_t i = 0; i < accumulators_.size() && i < keys_.size(); ++i) accumulators_[i]->del_post_hook(keys_[i]);
  keys_.clear();
}

void GradientHooks::install(const std::vector<at::Tensor>& parameters, const std::vector<std::string>& names,
                            OnReady on_ready) {
  auto shared = std::make_shared<OnReady>(std::move(on_ready));
  std::vector<torch::autograd::Node*> nodes;
  for (size_t i = 0; i < parameters.size(); ++i) {
    auto accumulator = torch::autograd::impl::grad_accumulator(parameters[i]);
    DDP_CHECK(accumulator != nullptr, "parameter '{}' has no gradient accumulator", names[i]);
    keys_.push_back(accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [shared, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list& inputs) {
          // The accumulator's one input: the gradient this run added.
          static const at::Tensor kNone;
          (*shared)(i, inputs.empty() ? kNone : inputs[0]);
          return outputs;
        })));
    nodes.push_back(accumulator.get());
    accumulators_.push_back(std::move(accumulator));
  }
  walker_ = std::make_unique<GraphWalker>(nodes);
}

size_t GradientHooks::walk(const std::vector<at::Tensor>& outputs, std::vector<char>& reachable) {
  return walker_->walk(outputs, reachable);
}

} // namespace ddp::detail
