// Deep supervision with libddp: an encoder-decoder with auxiliary heads at several scales.
// The loss weights the heads and drops some of them on some iterations (differently on
// each rank), one head is returned but never used in the loss, and one layer is kept for
// debugging and never called. PyTorch DDP stops here with "Expected to have finished
// reduction in the prior iteration..."; libddp reduces correctly and names the unused
// parameters.
//
//   mpirun -np 2 build/examples/deep_supervision [--find-unused]
#include <ddp/ddp.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstring>

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

int main(int argc, char** argv) {
  torch::set_num_threads(1);
  auto pg = ddp::init_process_group("auto");
  const int rank = pg->rank();
  ddp::Options options;
  options.find_unused_parameters = argc > 1 && std::strcmp(argv[1], "--find-unused") == 0;

  torch::manual_seed(0);
  EncoderDecoder net;
  ddp::DistributedDataParallel model(net, pg, options);
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-2));
  torch::manual_seed(10 + rank);

  for (int it = 0; it < 12; ++it) {
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
    // The main head always counts; the auxiliary heads are dropped on some iterations,
    // on a schedule that differs between ranks. "edges" is only logged.
    auto loss = bce(outs["full"], down(target, 16));
    if ((it + rank) % 3 != 0) loss = loss + 0.5 * bce(outs["half"], down(target, 8));
    if (it < 6 && rank == 0) loss = loss + 0.25 * bce(outs["quarter"], down(target, 4));
    loss.backward();
    opt.step();
    if (rank == 0) {
      auto join = [](const std::vector<std::string>& names) {
        std::string s;
        for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
        return s.empty() ? std::string("none") : s;
      };
      std::printf("iteration %2d  loss %.4f  edges mean %.3f\n  unused on every rank: %s\n  unused on rank 0: %s\n", it,
                  loss.item<double>(), torch::sigmoid(outs["edges"]).mean().item<double>(),
                  join(model.reducer().unused_parameters()).c_str(),
                  join(model.reducer().locally_unused_parameters()).c_str());
    }
  }
  return 0;
}
