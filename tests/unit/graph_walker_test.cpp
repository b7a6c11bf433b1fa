#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <ddp/output_tensors.h>

#include "reducer/graph_walker.h"

namespace {
// Parameters and their gradient accumulators, kept alive as the reducer keeps them
// (a tensor holds its accumulator only weakly).
struct Walk {
  std::vector<at::Tensor> params;
  std::vector<decltype(torch::autograd::impl::grad_accumulator(at::Tensor()))> accumulators;
  std::vector<torch::autograd::Node*> nodes;
  Walk(int n) {
    for (int i = 0; i < n; ++i) {
      params.push_back(torch::randn({3}, torch::requires_grad()));
      accumulators.push_back(torch::autograd::impl::grad_accumulator(params.back()));
      nodes.push_back(accumulators.back().get());
    }
  }
};
} // namespace

TEST_CASE("the graph walk finds parameters through nested outputs", "[graph]") {
  Walk w(5);
  auto& p = w.params;
  // Output structure: tuple<Tensor, vector<Tensor>, map<string, pair<Tensor, optional<Tensor>>>>.
  std::map<std::string, std::pair<at::Tensor, std::optional<at::Tensor>>> heads;
  heads["h"] = {p[2] * 2, std::nullopt};
  auto out = std::make_tuple(p[0].sin(), std::vector<at::Tensor>{p[1] + 1, torch::ones({3})}, heads);
  std::vector<at::Tensor> roots = ddp::output_tensors(out);
  CHECK(roots.size() == 4);
  ddp::detail::GraphWalker walker(w.nodes);
  std::vector<char> reachable(5, 0);
  walker.walk(roots, reachable);
  CHECK(reachable == std::vector<char>{1, 1, 1, 0, 0});
  // A parameter returned as an output is reachable through its own accumulator.
  walker.walk({p[4]}, reachable);
  CHECK(reachable == std::vector<char>{0, 0, 0, 0, 1});
  // Outputs that do not require grad reach nothing.
  walker.walk({torch::ones({2}), p[3].detach()}, reachable);
  CHECK(reachable == std::vector<char>{0, 0, 0, 0, 0});
}

TEST_CASE("the graph walk follows shared subgraphs once and reaches deep chains", "[graph]") {
  Walk w(2);
  at::Tensor h = w.params[0];
  for (int i = 0; i < 2000; ++i) h = h * 1.0001 + w.params[1]; // 4000+ nodes deep, no recursion
  ddp::detail::GraphWalker walker(w.nodes);
  std::vector<char> reachable(2, 0);
  const size_t visited = walker.walk({h, h}, reachable);
  CHECK(reachable == std::vector<char>{1, 1});
  CHECK(visited >= 4000);
  CHECK(visited < 4100);
}

TEST_CASE("output_tensors collects IValues and ordered dicts", "[graph]") {
  c10::IValue tuple = c10::ivalue::Tuple::create({c10::IValue(torch::ones({1})), c10::IValue(3),
                                                  c10::IValue(c10::List<at::Tensor>({torch::zeros({2}), torch::zeros({3})}))});
  CHECK(ddp::output_tensors(tuple).size() == 3);
  torch::OrderedDict<std::string, at::Tensor> dict;
  dict.insert("a", torch::ones({1}));
  dict.insert("b", at::Tensor()); // undefined: skipped
  CHECK(ddp::output_tensors(dict).size() == 1);
  CHECK(ddp::output_tensors(42).empty());
}
