// A minimal trainer with libddp: every rank fits the same MLP to its own shard of a
// synthetic regression problem; after each backward the gradients are averaged.
//
//   mpirun -np 2 build/examples/train_mlp            # with DDP
//   mpirun -np 2 build/examples/train_mlp --no-ddp   # the same trainer without DDP
#include <ddp/ddp.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstring>

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(64, 256));
    fc2 = register_module("fc2", torch::nn::Linear(256, 256));
    fc3 = register_module("fc3", torch::nn::Linear(256, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return fc3(torch::relu(fc2(torch::relu(fc1(x))))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};
TORCH_MODULE(Net);

int main(int argc, char** argv) {
  const bool use_ddp = !(argc > 1 && std::strcmp(argv[1], "--no-ddp") == 0);
  torch::set_num_threads(1); // 2 ranks on 2 cores: one compute thread each
  auto pg = ddp::init_process_group("auto");
  const int rank = pg->rank();

  // The target function is the same everywhere; each rank samples its own inputs.
  torch::manual_seed(0);
  auto true_w = torch::randn({64, 1});
  torch::manual_seed(1 + rank);

  torch::manual_seed(42);
  Net net;
  std::unique_ptr<ddp::DistributedDataParallel<NetImpl>> model;
  if (use_ddp) model = std::make_unique<ddp::DistributedDataParallel<NetImpl>>(net, pg);
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  torch::manual_seed(1 + rank);

  double total_ms = 0;
  const int iterations = 40;
  for (int it = 0; it < iterations; ++it) {
    auto x = torch::randn({128, 64});
    auto y = torch::sin(torch::matmul(x, true_w));
    const auto start = std::chrono::steady_clock::now();
    opt.zero_grad();
    auto out = use_ddp ? (*model)(x) : net->forward(x);
    auto loss = torch::mse_loss(out, y);
    loss.backward();
    opt.step();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (it >= 5) total_ms += ms;
    if (rank == 0) std::printf("iteration %2d  loss %.4f  step %.2f ms\n", it, loss.item<double>(), ms);
  }
  if (rank == 0) {
    std::printf("%s, %d ranks, one compute thread per rank: mean step %.2f ms over iterations 5-%d\n",
                use_ddp ? "libddp" : "no DDP", pg->size(), total_ms / (iterations - 5), iterations - 1);
  }
  return 0;
}
