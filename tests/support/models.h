// Small models for the multi-process tests, and the oracle: single-process autograd.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace ddp::test {

struct MlpImpl : torch::nn::Module {
  MlpImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 16));
    fc2 = register_module("fc2", torch::nn::Linear(16, 16));
    fc3 = register_module("fc3", torch::nn::Linear(16, 4));
  }
  torch::Tensor forward(torch::Tensor x) {
    return fc3(torch::relu(fc2(torch::relu(fc1(x)))));
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};
TORCH_MODULE(Mlp);

// Convolutions without bias, as before BatchNorm in real CNNs (a bias there has an
// exactly-zero gradient, which no relative tolerance can compare).
struct ConvNetImpl : torch::nn::Module {
  ConvNetImpl() {
    conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 6, 3).padding(1).bias(false)));
    bn1 = register_module("bn1", torch::nn::BatchNorm2d(6));
    conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(6, 8, 3).padding(1).bias(false)));
    bn2 = register_module("bn2", torch::nn::BatchNorm2d(8));
    fc = register_module("fc", torch::nn::Linear(8, 5));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(bn1(conv1(x)));
    x = torch::relu(bn2(conv2(x)));
    x = torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
    return fc(x);
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(ConvNet);

// float32 layers feeding float64 layers: buckets split by dtype.
struct MixedDtypeImpl : torch::nn::Module {
  MixedDtypeImpl() {
    a = register_module("a", torch::nn::Linear(8, 12));
    b = register_module("b", torch::nn::Linear(12, 12));
    c = register_module("c", torch::nn::Linear(12, 4));
    b->to(torch::kDouble);
  }
  torch::Tensor forward(torch::Tensor x) {
    auto h = torch::tanh(a(x.to(torch::kFloat)));
    h = torch::tanh(b(h.to(torch::kDouble)));
    return c(h.to(torch::kFloat));
  }
  torch::nn::Linear a{nullptr}, b{nullptr}, c{nullptr};
};
TORCH_MODULE(MixedDtype);

// Copies of every parameter's gradient (undefined stays undefined), by name.
inline std::vector<std::pair<std::string, torch::Tensor>> gradients_of(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters()) {
    out.emplace_back(p.key(), p.value().grad().defined() ? p.value().grad().clone() : torch::Tensor());
  }
  return out;
}

} // namespace ddp::test
