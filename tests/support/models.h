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
  // Rounding errors along the longest chain feeding a gradient (fc1.weight's), trained
  // with cross_entropy over 4 classes on `global_batch` samples; the counting rules are
  // in world.h, reduction_tolerance:
  //   forward  fc1 8+1, fc2 16+1, fc3 16+1 (fan-in + bias; relu exact)          43
  //   loss     cross_entropy over C=4 classes, forward and backward: 2C + 8     16
  //            (log_softmax: shift, exp, sum of C, log, subtract = C + 4; its
  //            backward: sum of C, exp, multiply, subtract = C + 3; the 1/batch scale)
  //   backward fc3 dX (fan-out 4), fc2 dX (fan-out 16)                          20
  //   fc1 dW   a sum over the global batch (both the shard sums plus the sum
  //            over ranks, and the oracle's one sum, have `global_batch` terms)  B
  //   average  the division by the world size                                  1
  static constexpr int64_t reduction_terms(int64_t global_batch) { return 80 + global_batch; }
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
  // Rounding errors along the longest chain feeding a gradient (conv1.weight's) for
  // 3x6x6 inputs (6x6 = 36 output positions per map), `shard` samples per rank (BatchNorm
  // statistics are per rank), `global_batch` samples in all, cross_entropy over 5 classes:
  //   forward  conv1 3*3*3 = 27; bn1: mean and variance over shard*36 each, then
  //            +eps, rsqrt, -mean, *rstd, *gamma, +beta: 72 shard + 6; conv2 6*3*3 =
  //            54; bn2 72 shard + 6; avg pool over 36, /36: 37; fc 8+1 = 9
  //                                                              = 139 + 144 shard
  //   loss     cross_entropy, C = 5: 2C + 8                            18
  //   backward fc dX (fan-out 5) 5; pool 1/36: 1; bn2 backward: sums of dy and of
  //            dy*xhat over shard*36, + 6; conv2 dX 8*3*3 = 72; bn1 backward 72
  //            shard + 6                                     = 90 + 144 shard
  //   conv1 dW a sum over the global batch and the 36 output positions   36 B
  //   average  the division by the world size                             1
  static constexpr int64_t reduction_terms(int64_t shard, int64_t global_batch) {
    return 248 + 288 * shard + 36 * global_batch;
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
  // Rounding errors along the longest chain feeding a gradient (a.weight's), counted at
  // float32's unit roundoff: b's float64 gradient is float32-accurate too, since the
  // loss, c and the gradient reaching b are float32 (so the test uses the least precise
  // dtype, least_precise_dtype(parameters)). cross_entropy over 4 classes:
  //   forward  a 8+1, tanh 1, b 12+1 (float64: counted as float32, conservative),
  //            tanh 1, cast to float32 1, c 12+1                               38
  //   loss     cross_entropy, C = 4: 2C + 8                                    16
  //   backward c dX (fan-out 4), tanh' 2 (1 - y^2, multiply), b dX (fan-out 12),
  //            cast to float32 1, tanh' 2                                      21
  //   a dW     a sum over the global batch                                     B
  //   average  the division by the world size                                  1
  static constexpr int64_t reduction_terms(int64_t global_batch) { return 76 + global_batch; }
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
