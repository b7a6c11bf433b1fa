#include "reducer/graph_walker.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>

namespace ddp::detail {

GraphWalker::GraphWalker(const std::vector<torch::autograd::Node*>& accumulators) {
  parameter_of_.reserve(accumulators.size());
  for (size_t i = 0; i < accumulators.size(); ++i) {
    parameter_of_.emplace(accumulators[i], i);
  }
}

size_t GraphWalker::walk(const std::vector<at::Tensor>& roots, std::vector<char>& reachable) {
  std::fill(reachable.begin(), reachable.end(), 0);
  seen_.clear();
  stack_.clear();
  for (const at::Tensor& root : roots) {
    if (!root.defined() || !root.requires_grad()) continue;
    torch::autograd::Node* node = torch::autograd::impl::gradient_edge(root).function.get();
    if (node != nullptr && seen_.insert(node).second) stack_.push_back(node);
  }
  while (!stack_.empty()) {
    torch::autograd::Node* node = stack_.back();
    stack_.pop_back();
    auto param = parameter_of_.find(node);
    if (param != parameter_of_.end()) {
      reachable[param->second] = 1;
    }
    for (const auto& edge : node->next_edges()) {
      torch::autograd::Node* next = edge.function.get();
      if (next != nullptr && seen_.insert(next).second) stack_.push_back(next);
    }
  }
  return seen_.size();
}

} // namespace ddp::detail
