// A minimal trainer with libddp: every rank fits the same MLP to its own samples of a
// synthetic regression problem; after each backward the gradients are averaged.
// It trains twice in one run — first the same trainer without DDP (each rank alone),
// then with libddp — and prints the loss and step time of each iteration and the mean
// step time of both, one compute thread per rank.
//
//   mpirun -np 2 build/examples/train_mlp
#include <ddp/ddp.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>

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

// Trains a fresh model for `iterations` steps; returns the mean step time (ms) after warm-up.
double train(const std::shared_ptr<ddp::ProcessGroup>& pg, bool use_ddp, int iterations) {
  const int rank = pg->rank();
  torch::manual_seed(0);
  const auto true_w = torch::randn({64, 1}) / 8; // the function to learn, the same everywhere
  torch::manual_seed(42);
  Net net; // same initial weights on every rank (DDP would broadcast rank 0's anyway)
  std::unique_ptr<ddp::DistributedDataParallel<NetImpl>> model;
  if (use_ddp) model = std::make_unique<ddp::DistributedDataParallel<NetImpl>>(net, pg);
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  torch::manual_seed(1 + rank); // each rank its own samples

  double total_ms = 0;
  const int warmup = 5;
  for (int it = 0; it < iterations; ++it) {
    auto x = torch::randn({128, 64});
    auto y = torch::tanh(torch::matmul(x, true_w));
    const auto start = std::chrono::steady_clock::now();
    opt.zero_grad();
    auto out = use_ddp ? (*model)(x) : net->forward(x);
    auto loss = torch::mse_loss(out, y);
    loss.backward();
    opt.step();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (it >= warmup) total_ms += ms;
    if (rank == 0) std::printf("%-7s iteration %2d  loss %.4f  step %.2f ms\n", use_ddp ? "libddp" : "no DDP", it,
                               loss.item<double>(), ms);
  }
  return total_ms / (iterations - warmup);
}

int main() {
  torch::set_num_threads(1); // ranks share the machine's cores: one compute thread each
  auto pg = ddp::init_process_group("auto");
  const int iterations = 60;
  const double alone = train(pg, /*use_ddp=*/false, iterations);
  const double with_ddp = train(pg, /*use_ddp=*/true, iterations);
  if (pg->rank() == 0) {
    std::printf("%d ranks, one compute thread per rank: mean step without DDP %.2f ms, with libddp %.2f ms\n",
                pg->size(), alone, with_ddp);
  }
  return 0;
}
