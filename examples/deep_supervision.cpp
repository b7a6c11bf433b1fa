// Deep supervision with libddp: an encoder-decoder with auxiliary heads at several scales.
// The loss weights the heads and drops some of them on some iterations (differently on
// each rank), one head is returned but never used in the loss, and one layer is kept for
// debugging and never called. PyTorch DDP stops here with "Expected to have finished
// reduction in the prior iteration..."; libddp reduces correctly and names the unused
// parameters.
//
//   mpirun -np 2 build/examples/deep_supervision [--find-unused]
//
// Soak options (bench/soak.sh runs 1000 steps at world 3 with them):
//   --steps N            iterations (default 12)
//   --random-heads SEED  each rank puts each of the three trained heads in its loss with
//                        probability 2/3 (at least one), drawn from (SEED, rank, step),
//                        instead of the fixed schedule below
//   --quiet              no per-iteration output
//   --check-identical    at the end, check that every parameter is bit-identical on all
//                        ranks (an allgather of its bytes); exit 1 naming the first that
//                        is not
#include <ddp/ddp.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

struct EncoderDecoderImpl : torch::nn::Module {
  EncoderDecoderImpl() {
    enc1 = register_module("enc1", conv(1, 8, 2));   // 32 -> 16
    enc2 = register_module("enc2", conv(8, 16, 2));  // 16 -> 8
    enc3 = register_module("enc3", conv(16, 32, 2)); // 8 -> 4
    dec2 = register_module("dec2", conv(32 + 16, 16, 1));
    dec1 = register_module("dec1", conv(16 + 8, 8, 1));
    head_full = register_module("head_full", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 1, 1)));
    head_half = register_module("head_half", torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 1, 1)));
    head_quarter = register_module("head_quarter", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 1, 1)));
    head_edges = register_module("head_edges", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 1, 1)));
    debug_probe = register_module("debug_probe", torch::nn::Linear(32, 32)); // kept for debugging, never called
  }
  static torch::nn::Conv2d conv(int in, int out, int stride) {
    return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).stride(stride).padding(1));
  }
  // Returns the predictions at full, half and quarter resolution, plus an edge map that
  // the trainer logs but does not train on.
  std::map<std::string, torch::Tensor> forward(torch::Tensor x) {
    auto e1 = torch::relu(enc1(x));
    auto e2 = torch::relu(enc2(e1));
    auto e3 = torch::relu(enc3(e2));
    auto up = [](const torch::Tensor& t, const torch::Tensor& like) {
      return torch::nn::functional::interpolate(
          t, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{like.size(2), like.size(3)}));
    };
    auto d2 = torch::relu(dec2(torch::cat({up(e3, e2), e2}, 1)));
    auto d1 = torch::relu(dec1(torch::cat({up(d2, e1), e1}, 1)));
    return {{"full", head_full(d1)}, {"half", head_half(d2)}, {"quarter", head_quarter(e3)},
            {"edges", head_edges(d1)}};
  }
  torch::nn::Conv2d enc1{nullptr}, enc2{nullptr}, enc3{nullptr}, dec2{nullptr}, dec1{nullptr};
  torch::nn::Conv2d head_full{nullptr}, head_half{nullptr}, head_quarter{nullptr}, head_edges{nullptr};
  torch::nn::Linear debug_probe{nullptr};
};
TORCH_MODULE(EncoderDecoder);

namespace {

struct Args {
  bool find_unused = false;
  int steps = 12;
  bool random_heads = false;
  unsigned seed = 0;
  bool quiet = false;
  bool check_identical = false;
  bool summary = false; // any soak option given: print a summary line at the end
};

// Returns false (after printing why) on an unknown flag or a bad value.
bool parse_args(int argc, char** argv, Args& args) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](long min) -> long {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      char* end = nullptr;
      const long v = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || v < min || v > 2147483647L) throw std::invalid_argument(a + ": bad value '" + argv[i] + "'");
      return v;
    };
    try {
      if (a == "--find-unused") {
        args.find_unused = true;
      } else if (a == "--steps") {
        args.steps = static_cast<int>(value(1));
        args.summary = true;
      } else if (a == "--random-heads") {
        args.random_heads = true;
        args.seed = static_cast<unsigned>(value(0));
        args.summary = true;
      } else if (a == "--quiet") {
        args.quiet = args.summary = true;
      } else if (a == "--check-identical") {
        args.check_identical = args.summary = true;
      } else {
        throw std::invalid_argument("unknown argument '" + a + "'");
      }
    } catch (const std::invalid_argument& e) {
      std::fprintf(stderr,
                   "deep_supervision: %s\nusage: deep_supervision [--find-unused] [--steps N] [--random-heads SEED] "
                   "[--quiet] [--check-identical]\n",
                   e.what());
      return false;
    }
  }
  return true;
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s.empty() ? std::string("none") : s;
}

// True on every rank iff every rank holds the same bytes: an allgather of the raw bytes
// through libddp's process group, compared on every rank (so every rank agrees).
bool identical_across_ranks(ddp::ProcessGroup& pg, const torch::Tensor& tensor) {
  auto bytes = tensor.detach().cpu().contiguous().reshape({-1}).view(torch::kByte).to(pg.device());
  std::vector<torch::Tensor> all;
  for (int r = 0; r < pg.size(); ++r) all.push_back(torch::empty_like(bytes));
  pg.allgather(all, bytes)->wait(std::chrono::minutes(1));
  for (const auto& other : all) {
    if (!torch::equal(other.cpu(), all[0].cpu())) return false;
  }
  return true;
}

} // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(1);
  Args args;
  if (!parse_args(argc, argv, args)) return 2;
  auto pg = ddp::init_process_group("auto");
  const int rank = pg->rank();
  ddp::Options options;
  options.find_unused_parameters(args.find_unused);

  torch::manual_seed(0);
  EncoderDecoder net;
  ddp::DistributedDataParallel model(net, pg, options);
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-2));
  torch::manual_seed(10 + rank);

  std::set<std::vector<std::string>> unused_sets; // distinct "unused on every rank" sets seen
  const auto start = std::chrono::steady_clock::now();
  for (int it = 0; it < args.steps; ++it) {
    auto x = torch::rand({4, 1, 32, 32});
    auto target = (x > 0.5).to(torch::kFloat); // segment the bright pixels
    opt.zero_grad();
    auto outs = model(x);
    auto down = [](const torch::Tensor& t, int64_t size) {
      return torch::nn::functional::adaptive_avg_pool2d(t, torch::nn::functional::AdaptiveAvgPool2dFuncOptions(size));
    };
    auto bce = [](const torch::Tensor& logits, const torch::Tensor& y) {
      return torch::nn::functional::binary_cross_entropy_with_logits(logits, y);
    };
    torch::Tensor loss;
    if (args.random_heads) {
      // Each trained head in the loss with probability 2/3, at least one; a head left out
      // leaves its own parameters unused on this rank, and dec1 too without "full", and
      // dec2 too without "full" and "half". "edges" is only logged.
      std::seed_seq seq{args.seed, static_cast<unsigned>(rank), static_cast<unsigned>(it)};
      std::mt19937 gen(seq);
      const bool full = gen() % 3 != 0, half = gen() % 3 != 0, quarter = gen() % 3 != 0;
      loss = torch::zeros({});
      if (full || (!half && !quarter)) loss = loss + bce(outs["full"], down(target, 16));
      if (half) loss = loss + 0.5 * bce(outs["half"], down(target, 8));
      if (quarter) loss = loss + 0.25 * bce(outs["quarter"], down(target, 4));
    } else {
      // The main head always counts; the auxiliary heads are dropped on some iterations,
      // on a schedule that differs between ranks. "edges" is only logged.
      loss = bce(outs["full"], down(target, 16));
      if ((it + rank) % 3 != 0) loss = loss + 0.5 * bce(outs["half"], down(target, 8));
      if (it < 6 && rank == 0) loss = loss + 0.25 * bce(outs["quarter"], down(target, 4));
    }
    loss.backward();
    opt.step();
    unused_sets.insert(model->reducer().unused_parameters());
    if (rank == 0 && !args.quiet) {
      std::printf("iteration %2d  loss %.4f  edges mean %.3f\n  unused on every rank: %s\n  unused on rank 0: %s\n", it,
                  loss.item<double>(), torch::sigmoid(outs["edges"]).mean().item<double>(),
                  join(model->reducer().unused_parameters()).c_str(),
                  join(model->reducer().locally_unused_parameters()).c_str());
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (rank == 0 && args.summary) {
    std::printf("deep_supervision: %d steps on %d ranks, find_unused_parameters=%s, random heads=%s, %zu distinct "
                "sets of parameters unused on every rank, %.2f s (%.2f ms/step)\n",
                args.steps, pg->size(), args.find_unused ? "on" : "off",
                args.random_heads ? std::to_string(args.seed).c_str() : "off", unused_sets.size(), seconds,
                1e3 * seconds / args.steps);
  }
  if (args.check_identical) {
    for (const auto& p : net->named_parameters()) {
      if (!identical_across_ranks(*pg, p.value())) {
        if (rank == 0) std::printf("NOT identical across ranks: parameter %s\n", p.key().c_str());
        std::fflush(stdout);
        return 1;
      }
    }
    if (rank == 0) {
      std::printf("parameters bit-identical across %d ranks: all %zu\n", pg->size(), net->named_parameters().size());
    }
  }
  std::fflush(stdout);
  return 0;
}
