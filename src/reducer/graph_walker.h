// GraphWalker: finds which parameters can receive a gradient from a forward's outputs,
// by a depth-first walk of the autograd graph from the outputs' gradient edges to the
// parameters' gradient accumulators. Keeps its scratch space between walks, so a walk
// allocates only when the graph grows.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace torch::autograd {
struct Node;
}

namespace ddp::detail {

class GraphWalker {
 public:
  // accumulators[i]: parameter i's gradient accumulator node.
  explicit GraphWalker(const std::vector<torch::autograd::Node*>& accumulators);

  // reachable[i] = 1 when parameter i is reachable from any of `roots`, else 0.
  // Returns the number of autograd nodes visited.
  size_t walk(const std::vector<at::Tensor>& roots, std::vector<char>& reachable);

 private:
  std::unordered_map<const torch::autograd::Node*, size_t> parameter_of_;
  std::unordered_set<const torch::autograd::Node*> seen_;
  std::vector<torch::autograd::Node*> stack_;
};

} // namespace ddp::detail
