// The benchmark's models: what users train, in the shapes that stress a reducer
// differently (few large tensors, many tiny ones, buffers, unused heads).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace ddp::bench {

// 8 x Linear(1024, 1024): 8.4 M parameters in 16 tensors, communication-heavy.
struct MlpImpl : torch::nn::Module {
  MlpImpl() {
    for (int i = 0; i < 8; ++i) layers.push_back(register_module("fc" + std::to_string(i), torch::nn::Linear(1024, 1024)));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (size_t i = 0; i < layers.size(); ++i) {
      x = layers[i](x);
      if (i + 1 < layers.size()) x = torch::relu(x);
    }
    return x;
  }
  std::vector<torch::nn::Linear> layers;
};
TORCH_MODULE(Mlp);

// 400 x Linear(32, 32) with Tanh: 800 tiny tensors, the reducer's per-hook cost dominates.
struct SmallImpl : torch::nn::Module {
  SmallImpl() {
    for (int i = 0; i < 400; ++i) layers.push_back(register_module("l" + std::to_string(i), torch::nn::Linear(32, 32)));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& l : layers) x = torch::tanh(l(x));
    return x;
  }
  std::vector<torch::nn::Linear> layers;
};
TORCH_MODULE(Small);

// A small CNN with BatchNorm (buffers broadcast each forward).
struct ConvNetImpl : torch::nn::Module {
  ConvNetImpl() {
    auto conv = [](int in, int out, int stride) {
      return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false));
    };
    c1 = register_module("c1", conv(3, 32, 1));
    b1 = register_module("b1", torch::nn::BatchNorm2d(32));
    c2 = register_module("c2", conv(32, 64, 2));
    b2 = register_module("b2", torch::nn::BatchNorm2d(64));
    c3 = register_module("c3", conv(64, 64, 2));
    b3 = register_module("b3", torch::nn::BatchNorm2d(64));
    fc = register_module("fc", torch::nn::Linear(64, 10));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(b1(c1(x)));
    x = torch::relu(b2(c2(x)));
    x = torch::relu(b3(c3(x)));
    return fc(torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1));
  }
  torch::nn::Conv2d c1{nullptr}, c2{nullptr}, c3{nullptr};
  torch::nn::BatchNorm2d b1{nullptr}, b2{nullptr}, b3{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(ConvNet);

// Deep supervision: a trunk with a head at every depth; the loss uses some heads per
// iteration, one head is returned but never in the loss, one layer is never called.
struct DeepSupImpl : torch::nn::Module {
  DeepSupImpl() {
    for (int i = 0; i < 6; ++i) {
      trunk.push_back(register_module("trunk" + std::to_string(i), torch::nn::Linear(256, 256)));
      heads.push_back(register_module("head" + std::to_string(i), torch::nn::Linear(256, 10)));
    }
    debug = register_module("debug", torch::nn::Linear(256, 256));
  }
  std::vector<torch::Tensor> forward(torch::Tensor x) {
    std::vector<torch::Tensor> outs;
    for (size_t i = 0; i < trunk.size(); ++i) {
      x = torch::relu(trunk[i](x));
      outs.push_back(heads[i](x));
    }
    return outs;
  }
  std::vector<torch::nn::Linear> trunk, heads;
  torch::nn::Linear debug{nullptr};
};
TORCH_MODULE(DeepSup);

} // namespace ddp::bench
