// A minimal trainer with libddp: every rank fits the same MLP to its own samples of a
// synthetic regression problem; after each backward the gradients are averaged.
// It trains twice in one run — first the same trainer without DDP (each rank alone),
// then with libddp — and prints the loss and step time of each iteration and the mean
// step time of both, one compute thread per rank. With --comm-hook it trains a third
// time with that communication hook and compares the final loss (on a held-out batch)
// with plain libddp's; --max-loss-gap PCT makes a larger relative gap an exit status 1.
//
//   mpirun -np 2 build/examples/train_mlp
//   mpirun -np 2 build/examples/train_mlp --comm-hook powersgd --max-loss-gap 5
#include <ddp/ddp.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

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

// The hook named on the command line (allreduce, fp16, bf16, powersgd), or null.
std::shared_ptr<ddp::CommHook> make_hook(const std::string& name) {
  if (name.empty()) return nullptr;
  if (name == "allreduce") return ddp::hooks::allreduce();
  if (name == "fp16") return ddp::hooks::fp16_compress();
  if (name == "bf16") return ddp::hooks::bf16_compress();
  if (name == "powersgd") {
    ddp::hooks::PowerSGDOptions options;
    options.matrix_approximation_rank(4);
    options.start_powerSGD_iter(10); // plain all-reduce while the loss falls fastest
    return ddp::hooks::powersgd(options);
  }
  std::fprintf(stderr, "train_mlp: unknown --comm-hook '%s' (allreduce, fp16, bf16, powersgd)\n", name.c_str());
  std::exit(2);
}

struct Result {
  double step_ms;    // mean step time after warm-up
  double final_loss; // on a held-out batch, the same on every rank
};

// Trains a fresh model for `iterations` steps.
Result train(const std::shared_ptr<ddp::ProcessGroup>& pg, bool use_ddp, int iterations,
             std::shared_ptr<ddp::CommHook> hook = nullptr) {
  const int rank = pg->rank();
  torch::manual_seed(0);
  const auto true_w = torch::randn({64, 1}) / 8; // the function to learn, the same everywhere
  const auto eval_x = torch::randn({512, 64});
  const auto eval_y = torch::tanh(torch::matmul(eval_x, true_w));
  torch::manual_seed(42);
  Net net; // same initial weights on every rank (DDP would broadcast rank 0's anyway)
  ddp::DistributedDataParallel<NetImpl> model = nullptr;
  if (use_ddp) model = ddp::DistributedDataParallel<NetImpl>(net, pg);
  if (hook) model->register_comm_hook(hook); // once, before the first forward
  const char* label = hook ? "hook" : use_ddp ? "libddp" : "no DDP";
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  torch::manual_seed(1 + rank); // each rank its own samples

  double total_ms = 0;
  const int warmup = 5;
  for (int it = 0; it < iterations; ++it) {
    auto x = torch::randn({128, 64});
    auto y = torch::tanh(torch::matmul(x, true_w));
    const auto start = std::chrono::steady_clock::now();
    opt.zero_grad();
    auto out = use_ddp ? model(x) : net->forward(x);
    auto loss = torch::mse_loss(out, y);
    loss.backward();
    opt.step();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (it >= warmup) total_ms += ms;
    if (rank == 0) std::printf("%-7s iteration %2d  loss %.4f  step %.2f ms\n", label, it, loss.item<double>(), ms);
  }
  torch::NoGradGuard no_grad;
  const double final_loss = torch::mse_loss(net->forward(eval_x), eval_y).item<double>();
  return {total_ms / (iterations - warmup), final_loss};
}

int main(int argc, char** argv) {
  std::string hook_name;
  double max_gap_pct = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--comm-hook" && i + 1 < argc) {
      hook_name = argv[++i];
    } else if (a == "--max-loss-gap" && i + 1 < argc) {
      max_gap_pct = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: train_mlp [--comm-hook allreduce|fp16|bf16|powersgd] [--max-loss-gap PCT]\n");
      return 2;
    }
  }
  torch::set_num_threads(1); // ranks share the machine's cores: one compute thread each
  auto pg = ddp::init_process_group("auto");
  const int iterations = 60;
  const Result alone = train(pg, /*use_ddp=*/false, iterations);
  const Result with_ddp = train(pg, /*use_ddp=*/true, iterations);
  if (pg->rank() == 0) {
    std::printf("%d ranks on the %s backend, one compute thread per rank: mean step without DDP %.2f ms, with libddp "
                "%.2f ms\n",
                pg->size(), pg->backend().c_str(), alone.step_ms, with_ddp.step_ms);
  }
  if (hook_name.empty()) return 0;
  auto hook = make_hook(hook_name);
  const Result hooked = train(pg, /*use_ddp=*/true, iterations, hook);
  const double gap_pct = 100.0 * std::abs(hooked.final_loss - with_ddp.final_loss) / with_ddp.final_loss;
  if (pg->rank() == 0) {
    std::printf("final held-out loss: libddp %.5f, with hook %s %.5f (%+.1f %%); mean step %.2f ms\n",
                with_ddp.final_loss, hook->name().c_str(), hooked.final_loss,
                100.0 * (hooked.final_loss - with_ddp.final_loss) / with_ddp.final_loss, hooked.step_ms);
  }
  if (max_gap_pct >= 0 && gap_pct > max_gap_pct) {
    if (pg->rank() == 0) {
      std::fprintf(stderr, "train_mlp: the hook's final loss is %.1f %% from libddp's, more than --max-loss-gap %.1f\n",
                   gap_pct, max_gap_pct);
    }
    return 1;
  }
  return 0;
}
