// A model scripted in Python (examples/script_model.py) trained under libddp from C++.
// Each step checks what DDP promises against a local computation: every rank's gradients
// equal the average over the ranks of the gradients each would compute alone (from a clone
// of the module that no reducer touches), and the parameters stay identical on every rank.
//
//   python3 examples/script_model.py model.pt
//   mpirun -np 2 build/examples/train_torchscript model.pt
#include <ddp/ddp.h>
#include <ddp/script_distributed_data_parallel.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

namespace {

int train(const char* path) {
  torch::set_num_threads(1); // ranks share the machine's cores: one compute thread each
  auto pg = ddp::init_process_group();
  const int rank = pg->rank();
  const int world = pg->size();

  torch::jit::Module script = torch::jit::load(path);
  torch::jit::Module local = torch::jit::load(path);
  ddp::ScriptDistributedDataParallel model(script, pg);
  torch::optim::SGD optimizer(model.parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));

  double worst = 0; // max |ddp - expected| / tolerance over every step and gradient
  for (int step = 0; step < 5; ++step) {
    auto gen = at::detail::createCPUGenerator(100 * step + rank);
    auto x = torch::randn({8, 16}, gen);
    auto y = torch::randn({8, 1}, gen);

    // What this rank would compute alone, on a second copy of the file that shares
    // nothing with the model (clone() and deepcopy() would keep an autograd edge back to
    // the model's parameters), given the model's current values.
    {
      torch::NoGradGuard no_grad;
      auto from = model.module().named_parameters();
      auto it = from.begin();
      for (const auto& p : local.named_parameters()) {
        p.value.copy_((*it).value);
        p.value.mutable_grad() = at::Tensor();
        ++it;
      }
      auto buffers = model.module().named_buffers();
      auto b = buffers.begin();
      for (const auto& q : local.named_buffers()) {
        q.value.copy_((*b).value);
        ++b;
      }
    }
    torch::mse_loss(local.forward({x}).toTensor(), y).backward();

    optimizer.zero_grad();
    auto loss = torch::mse_loss(model({x}).toTensor(), y);
    loss.backward();

    auto mine = model.module().named_parameters();
    for (const auto& reference : local.named_parameters()) {
      at::Tensor ddp_grad;
      for (const auto& p : mine) {
        if (p.name == reference.name) ddp_grad = p.value.grad();
      }
      if (!reference.value.grad().defined()) {
        if (ddp_grad.defined()) {
          std::fprintf(stderr, "rank %d: %s has a gradient but no rank used it\n", rank, reference.name.c_str());
          return 1;
        }
        continue;
      }
      at::Tensor expected = reference.value.grad().clone();
      pg->allreduce(expected)->wait(pg->timeout());
      expected /= world;
      // Sums of `world` terms in another order than the reducer's: a few roundings of
      // float's epsilon, relative to the largest magnitude.
      const double scale = std::max(1.0, expected.abs().max().item<double>());
      const double tolerance = 8.0 * world * std::numeric_limits<float>::epsilon() * scale;
      worst = std::max(worst, (ddp_grad - expected).abs().max().item<double>() / tolerance);
    }
    optimizer.step();
    if (rank == 0) std::printf("step %d loss %.5f\n", step, loss.item<double>());
  }

  bool identical = true;
  for (const auto& p : model.parameters()) {
    at::Tensor root = p.detach().clone();
    pg->broadcast(root, 0)->wait(pg->timeout());
    identical &= torch::equal(root, p.detach());
  }
  std::printf("rank %d: gradients within %.3f of their tolerance, parameters %s rank 0's\n", rank, worst,
              identical ? "equal to" : "DIFFERENT FROM");
  return worst <= 1.0 && identical ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: train_torchscript MODEL.pt (made by examples/script_model.py)\n");
    return 2;
  }
  try {
    return train(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_torchscript: %s\n", e.what());
    return 1;
  }
}
