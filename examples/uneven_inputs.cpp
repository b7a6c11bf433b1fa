// Training on uneven shards with ddp::Join. A synthetic dataset of 1000 samples is split
// into contiguous shards of different sizes (rank r gets a few more samples than rank
// r + 1, as when a dataset does not divide evenly and the last batches are kept). Each
// rank trains on its own shard for two epochs; the ranks that run out first join and
// shadow the others, so nobody waits out a timeout, and every epoch ends with the same
// model on every rank, which the example checks and reports.
//
//   mpirun -np 2 build/examples/uneven_inputs
#include <ddp/ddp.h>
#include <torch/torch.h>

#include <cstdio>

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(16, 64));
    fc2 = register_module("fc2", torch::nn::Linear(64, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Net);

int main() {
  torch::set_num_threads(1); // ranks share the machine's cores: one compute thread each
  auto pg = ddp::init_process_group("auto");
  const int rank = pg->rank();
  const int world = pg->size();

  // The dataset, the same on every rank; rank r's shard is [begin, end).
  torch::manual_seed(0);
  const int64_t samples = 1000;
  const auto x = torch::randn({samples, 16});
  const auto y = torch::sin(x.sum(1, /*keepdim=*/true));
  // Uneven on purpose: rank r gets (world - r) more units of 8 samples than the last rank.
  int64_t units = 0;
  for (int q = 0; q < world; ++q) units += 10 + (world - q);
  int64_t begin = 0;
  for (int q = 0; q < rank; ++q) begin += samples * (10 + (world - q)) / units;
  const int64_t end = rank == world - 1 ? samples : begin + samples * (10 + (world - rank)) / units;
  const int64_t batch = 32;

  torch::manual_seed(1);
  Net net;
  ddp::DistributedDataParallel model(net, pg);
  torch::optim::SGD opt(net->parameters(), 0.05);

  for (int epoch = 0; epoch < 2; ++epoch) {
    int steps = 0;
    double last_loss = 0;
    {
      ddp::Join join(model); // every rank, around the same loop
      for (int64_t i = begin; i < end; i += batch) {
        const int64_t stop = std::min(i + batch, end);
        opt.zero_grad();
        auto loss = torch::mse_loss(model(x.slice(0, i, stop)), y.slice(0, i, stop));
        loss.backward();
        opt.step();
        last_loss = loss.item<double>();
        ++steps;
      }
      join.join(); // out of data: shadow the ranks that still have some
    }
    // Every rank leaves the Join with the same parameters: check it with one collective.
    auto flat = torch::cat({net->fc1->weight.flatten(), net->fc1->bias, net->fc2->weight.flatten(), net->fc2->bias});
    auto copy = flat.clone();
    pg->broadcast(copy, 0)->wait();
    const bool same = torch::equal(flat, copy);
    std::printf("rank %d epoch %d: %lld samples, %d steps, last loss %.4f, parameters %s rank 0's\n", rank, epoch,
                static_cast<long long>(end - begin), steps, last_loss, same ? "equal to" : "DIFFERENT FROM");
    if (!same) return 1;
  }
  return 0;
}
