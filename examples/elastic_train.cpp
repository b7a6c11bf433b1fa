// elastic_train: a trainer that survives torchrun's restarts. Every K steps rank 0 writes a
// checkpoint (parameters and the step, written to a temporary and renamed, so a crash
// leaves the previous one whole); a (re)started worker resumes from it. torchrun
// (--max-restarts N) restarts every worker when one dies; libddp rendezvouses again on the
// agent's store under the new attempt's prefix (TORCHELASTIC_RESTART_COUNT).
//
// Each step's batch depends only on the step and the rank (seeded), so a resumed run sees
// the same data as an uninterrupted one, and with SGD (no optimizer state) its final
// parameters are the same bit for bit (tests/launch/elastic_restart.sh checks it).
//
//   torchrun --standalone --nproc-per-node 2 --max-restarts 2 --no-python \
//       build/examples/elastic_train --dir /tmp/ckpt --out final.bin [--die-at-step 13 --die-rank 1]
//
// --die-at-step S --die-rank R: rank R kills itself (SIGKILL) in step S of the first
// attempt only, to exercise the restart.
#include <torch/torch.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <ddp/ddp.h>

namespace {

struct Args {
  int steps = 30;
  int checkpoint_every = 5;
  int die_at_step = -1;
  int die_rank = 1;
  std::string dir = "elastic_ckpt";
  std::string out;
};

[[noreturn]] void usage(int code) {
  std::fprintf(stderr, "usage: elastic_train [--steps N] [--checkpoint-every K] [--dir PATH] [--out FILE] "
                       "[--die-at-step S --die-rank R]\n");
  std::exit(code);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(2);
      return argv[++i];
    };
    if (arg == "--steps") a.steps = std::stoi(value());
    else if (arg == "--checkpoint-every") a.checkpoint_every = std::stoi(value());
    else if (arg == "--die-at-step") a.die_at_step = std::stoi(value());
    else if (arg == "--die-rank") a.die_rank = std::stoi(value());
    else if (arg == "--dir") a.dir = value();
    else if (arg == "--out") a.out = value();
    else usage(arg == "--help" ? 0 : 2);
  }
  return a;
}

// The batch of `step` on `rank`: a function of both only.
std::pair<torch::Tensor, torch::Tensor> batch(int step, int rank) {
  torch::manual_seed(1000 * step + rank);
  torch::Tensor x = torch::randn({16, 8});
  return {x, x.sum(1, /*keepdim=*/true).mul(0.5).tanh()};
}

std::string checkpoint_path(const Args& a) { return a.dir + "/checkpoint.pt"; }

} // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  torch::set_num_threads(1);
  auto pg = ddp::init_process_group();
  const int rank = pg->rank();
  const char* attempt_text = std::getenv("TORCHELASTIC_RESTART_COUNT");
  const int attempt = attempt_text ? std::atoi(attempt_text) : 0;

  torch::manual_seed(0);
  auto net = std::make_shared<torch::nn::SequentialImpl>(torch::nn::Linear(8, 16), torch::nn::Tanh(),
                                                         torch::nn::Linear(16, 1));
  int start = 0;
  if (std::filesystem::exists(checkpoint_path(args))) {
    std::vector<torch::Tensor> saved;
    torch::load(saved, checkpoint_path(args));
    auto params = net->parameters();
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
    start = saved.back().item<int>();
    if (rank == 0) std::printf("elastic_train: attempt %d resumed from the checkpoint of step %d\n", attempt, start);
  }

  ddp::DistributedDataParallel<torch::nn::SequentialImpl> model(net, pg);
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.05));
  for (int step = start; step < args.steps; ++step) {
    auto [x, y] = batch(step, rank);
    optimizer.zero_grad();
    auto loss = torch::mse_loss(model(x), y);
    if (attempt == 0 && step == args.die_at_step && rank == args.die_rank) {
      std::printf("elastic_train: rank %d dies in step %d (attempt %d)\n", rank, step, attempt);
      std::fflush(stdout);
      std::raise(SIGKILL);
    }
    loss.backward();
    optimizer.step();
    const int done = step + 1;
    if (rank == 0 && done % args.checkpoint_every == 0) {
      std::filesystem::create_directories(args.dir);
      std::vector<torch::Tensor> state;
      for (const auto& p : net->parameters()) state.push_back(p.detach().clone());
      state.push_back(torch::tensor(done));
      torch::save(state, checkpoint_path(args) + ".tmp");
      std::filesystem::rename(checkpoint_path(args) + ".tmp", checkpoint_path(args));
    }
  }
  if (rank == 0 && !args.out.empty()) {
    // The raw bytes of every parameter, in order: two runs compare with cmp.
    std::ofstream out(args.out, std::ios::binary);
    for (const auto& p : net->parameters()) {
      const torch::Tensor c = p.detach().contiguous();
      out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.nbytes()));
    }
    std::printf("elastic_train: %d steps done (attempt %d); parameters written to %s\n", args.steps, attempt,
                args.out.c_str());
  }
  pg->barrier();
  return 0;
}
