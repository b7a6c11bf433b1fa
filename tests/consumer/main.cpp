// Trains a linear layer for a few steps with the installed libddp and checks that the
// ranks end with identical weights. Exit code 0 on success.
#include <ddp/ddp.h>
#include <torch/torch.h>

#include <cstdio>

int main() {
  torch::set_num_threads(1);
  auto pg = ddp::init_process_group("mpi");
  torch::manual_seed(pg->rank());
  torch::nn::Linear net(4, 1);
  ddp::DistributedDataParallel model(net, pg);
  torch::optim::SGD opt(net->parameters(), 0.1);
  for (int i = 0; i < 3; ++i) {
    opt.zero_grad();
    auto x = torch::full({2, 4}, static_cast<float>(pg->rank() + i));
    model(x).pow(2).mean().backward();
    opt.step();
  }
  at::Tensor w = net->weight.detach().clone();
  std::vector<at::Tensor> all;
  for (int r = 0; r < pg->size(); ++r) all.push_back(at::empty_like(w));
  pg->allgather(all, w)->wait();
  for (const auto& other : all) {
    if (!at::equal(other, all[0])) {
      std::fprintf(stderr, "consumer: rank %d: weights differ across ranks\n", pg->rank());
      return 1;
    }
  }
  if (pg->rank() == 0) std::printf("consumer: %d ranks, identical weights after 3 steps\n", pg->size());
  return 0;
}
