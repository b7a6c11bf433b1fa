#include <ddp/ddp.h>
#include <torch/torch.h>

#include <iostream>

struct NetImpl : torch::nn::Module {
  torch::nn::Linear fc1{register_module("fc1", torch::nn::Linear(16, 64))};
  torch::nn::Linear fc2{register_module("fc2", torch::nn::Linear(64, 1))};
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(fc1(x))); }
};
TORCH_MODULE(Net);

int main() {
  auto pg = ddp::init_process_group();             // ranks from mpirun (or torchrun, see below)
  ddp::DistributedDataParallel model(Net(), pg);    // same model everywhere: checked, rank 0's weights
  torch::optim::SGD opt(model->parameters(), 0.05);
  torch::manual_seed(pg->rank());                   // each rank draws its own data
  for (int step = 0; step < 100; ++step) {
    auto x = torch::randn({32, 16});
    auto y = x.sum(1, /*keepdim=*/true).sin();
    opt.zero_grad();
    auto loss = torch::mse_loss(model(x), y);
    loss.backward();                                // gradients averaged over the ranks on return
    opt.step();
    if (pg->rank() == 0 && step % 20 == 0) std::cout << "step " << step << " loss " << loss.item<float>() << "\n";
  }
  model->eval();                                    // evaluation: no collective, so rank 0 alone may run it
  if (pg->rank() == 0) std::cout << "eval output " << model(torch::ones({1, 16})).item<float>() << "\n";
}
