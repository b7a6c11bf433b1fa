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

// ResNet-18's shape (a 3x3 stem, four stages of two basic blocks, 1x1 projection
// shortcuts where the stage narrows the image) at half its width (32-64-128-256
// channels) for 32x32 images: 2.8 M parameters (10.7 MiB) in 62 tensors, compute
// and communication of the same order on a 1 Gbit/s link. Not among `all`.
constexpr int64_t kResNetBatch = 8;

struct BasicBlockImpl : torch::nn::Module {
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride) {
    c1 = register_module("c1", conv(in, out, 3, stride));
    b1 = register_module("b1", torch::nn::BatchNorm2d(out));
    c2 = register_module("c2", conv(out, out, 3, 1));
    b2 = register_module("b2", torch::nn::BatchNorm2d(out));
    if (stride != 1 || in != out) {
      down = register_module("down", conv(in, out, 1, stride));
      bd = register_module("bd", torch::nn::BatchNorm2d(out));
    }
  }
  static torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t k, int64_t stride) {
    return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, k).stride(stride).padding(k / 2).bias(false));
  }
  torch::Tensor forward(torch::Tensor x) {
    auto y = b2(c2(torch::relu(b1(c1(x)))));
    return torch::relu(y + (down ? bd(down(x)) : x));
  }
  torch::nn::Conv2d c1{nullptr}, c2{nullptr}, down{nullptr};
  torch::nn::BatchNorm2d b1{nullptr}, b2{nullptr}, bd{nullptr};
};
TORCH_MODULE(BasicBlock);

struct ResNetImpl : torch::nn::Module {
  ResNetImpl() {
    stem = register_module("stem", BasicBlockImpl::conv(3, 32, 3, 1));
    bn = register_module("bn", torch::nn::BatchNorm2d(32));
    int64_t in = 32;
    for (int64_t stage = 0; stage < 4; ++stage) {
      const int64_t out = 32 << stage;
      for (int64_t b = 0; b < 2; ++b) {
        blocks.push_back(register_module("layer" + std::to_string(stage + 1) + "_" + std::to_string(b),
                                         BasicBlock(in, out, b == 0 && stage > 0 ? 2 : 1)));
        in = out;
      }
    }
    fc = register_module("fc", torch::nn::Linear(in, 10));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(bn(stem(x)));
    for (auto& b : blocks) x = b(x);
    return fc(torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1));
  }
  torch::nn::Conv2d stem{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  std::vector<BasicBlock> blocks;
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(ResNet);

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

// Multi-task: a shared trunk and two task towers of the same size, task B's computed only
// while it is on. The bench runs an epoch of task A only, on every rank: B's tower, about
// half the parameters, gets no gradient anywhere (what skip_all_reduce_unused_params saves).
struct MultiTaskImpl : torch::nn::Module {
  MultiTaskImpl() {
    trunk = register_module("trunk", torch::nn::Linear(256, 512));
    for (const char* task : {"a", "b"}) {
      auto& tower = std::string(task) == "a" ? tower_a : tower_b;
      tower = register_module(std::string("tower_") + task,
                              torch::nn::Sequential(torch::nn::Linear(512, 1024), torch::nn::ReLU(),
                                                    torch::nn::Linear(1024, 1024), torch::nn::ReLU(),
                                                    torch::nn::Linear(1024, 10)));
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    torch::Tensor h = torch::relu(trunk(x));
    torch::Tensor out = tower_a->forward(h);
    if (task_b_on) out = out + tower_b->forward(h);
    return out;
  }
  torch::nn::Linear trunk{nullptr};
  torch::nn::Sequential tower_a{nullptr}, tower_b{nullptr};
  bool task_b_on = false;
};
TORCH_MODULE(MultiTask);

// Recommendation: a large embedding table with sparse gradients (1 M rows of 64 floats,
// 256 MiB) looked up by kSparseBag ids per sample and averaged, and a dense MLP on top
// (0.1 M parameters). A step touches at most batch x kSparseBag rows, so the reducer sums
// sparse gradients (gathered indices and values) instead of all-reducing 256 MiB.
constexpr int64_t kSparseRows = 1000000, kSparseDim = 64, kSparseBag = 8;

struct SparseRecImpl : torch::nn::Module {
  SparseRecImpl() {
    embedding = register_module(
        "embedding", torch::nn::Embedding(torch::nn::EmbeddingOptions(kSparseRows, kSparseDim).sparse(true)));
    mlp = register_module("mlp", torch::nn::Sequential(torch::nn::Linear(kSparseDim, 256), torch::nn::ReLU(),
                                                       torch::nn::Linear(256, 256), torch::nn::ReLU(),
                                                       torch::nn::Linear(256, 10)));
  }
  // ids: [batch, kSparseBag] row indices.
  torch::Tensor forward(torch::Tensor ids) { return mlp->forward(embedding(ids).mean(1)); }
  torch::nn::Embedding embedding{nullptr};
  torch::nn::Sequential mlp{nullptr};
};
TORCH_MODULE(SparseRec);

} // namespace ddp::bench
