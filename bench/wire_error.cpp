// The error of a low-precision reduction against the exact average (docs/performance.md,
// "Precision on the wire"): every rank plants a gradient it knows (each rank can recompute
// every other rank's from its seed), the DDP wrapper reduces it in one of several ways, and
// rank 0 compares the result with the average computed in double from all of them.
//
//   mpirun -np 4 build/bench/ddp_wire_error [--elements N] [--markdown]
//
// Ways: the float32 all-reduce (reference for what float32 itself costs), the fp16 and
// bf16 compression hooks (ddp::hooks, sums computed in the compressed dtype inside the
// collective), and Options::wire_dtype bf16 / fp16 (compressed on the wire, summed in
// float32 in rank order). The error of each element is taken relative to
// A = sum_r |x_r| / n, the size of the terms it averages; the table gives its maximum and
// mean over all elements, in units of the wire dtype's unit roundoff u (2^-8 for bf16,
// 2^-11 for fp16: rounding an input and the output costs up to about 2 u).
#include <ddp/ddp.h>
#include <ddp/hooks.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace {

// One parameter; loss(c) = sum(p * c) plants grad p = c exactly.
struct PlantedImpl : torch::nn::Module {
  explicit PlantedImpl(int64_t n) { p = register_parameter("p", torch::zeros({n})); }
  torch::Tensor forward(const torch::Tensor& planted) { return (p * planted).sum(); }
  torch::Tensor p;
};
TORCH_MODULE(Planted);

// Rank q's gradient: a signal shared by the ranks plus noise of its own, as minibatch
// gradients are, at magnitudes from 2^-8 to 2^8 (the same on every rank for an element).
torch::Tensor gradient_of(int q, int64_t n) {
  auto shared = at::detail::createCPUGenerator(12345);
  torch::Tensor scale = torch::exp2(torch::randint(-8, 9, {n}, shared, torch::kFloat));
  torch::Tensor signal = torch::randn({n}, shared);
  auto own = at::detail::createCPUGenerator(1000 + static_cast<uint64_t>(q));
  return (signal + torch::randn({n}, own)) * scale;
}

struct Way {
  std::string name;
  c10::ScalarType dtype; // whose unit roundoff the error is given in
  std::function<void(ddp::Options&)> options;
  std::function<std::shared_ptr<ddp::CommHook>()> hook;
};

double unit_roundoff(c10::ScalarType t) {
  if (t == at::kBFloat16) return std::ldexp(1.0, -8);
  if (t == at::kHalf) return std::ldexp(1.0, -11);
  return std::ldexp(1.0, -24);
}

} // namespace

int main(int argc, char** argv) {
  int64_t elements = 1 << 20;
  bool markdown = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--elements" && i + 1 < argc) elements = std::stoll(argv[++i]);
    else if (a == "--markdown") markdown = true;
    else {
      std::fprintf(stderr, "usage: mpirun -np N ddp_wire_error [--elements N] [--markdown]\n");
      return 2;
    }
  }
  torch::set_num_threads(1);
  auto pg = ddp::init_process_group();
  const int n = pg->size();
  const int rank = pg->rank();

  // The exact average and the terms' size, in double, from every rank's gradient.
  torch::Tensor sum = torch::zeros({elements}, torch::kDouble);
  torch::Tensor size = torch::zeros({elements}, torch::kDouble);
  for (int q = 0; q < n; ++q) {
    const torch::Tensor x = gradient_of(q, elements).to(torch::kDouble);
    sum += x;
    size += x.abs();
  }
  const torch::Tensor exact = sum / n;
  const torch::Tensor a = size / n;

  const std::vector<Way> ways{
      {"float32 all-reduce", at::kFloat, [](ddp::Options&) {}, nullptr},
      {"fp16_compress hook", at::kHalf, [](ddp::Options&) {}, [] { return ddp::hooks::fp16_compress(); }},
      {"wire_dtype fp16, float32 sums", at::kHalf, [](ddp::Options& o) { o.wire_dtype(at::kHalf); }, nullptr},
      {"bf16_compress hook", at::kBFloat16, [](ddp::Options&) {}, [] { return ddp::hooks::bf16_compress(); }},
      {"wire_dtype bf16, float32 sums", at::kBFloat16, [](ddp::Options& o) { o.wire_dtype(at::kBFloat16); },
       nullptr},
  };
  if (rank == 0) {
    std::printf("ddp_wire_error: %d ranks, backend %s, %lld elements; error relative to A = sum |x_r| / n, in units "
                "of the dtype's unit roundoff u\n",
                n, pg->backend().c_str(), static_cast<long long>(elements));
    if (markdown) {
      std::printf("| ranks | reduction | max error / (u A) | mean error / (u A) |\n| --- | --- | --- | --- |\n");
    } else {
      std::printf("%-32s %12s %12s\n", "reduction", "max (u A)", "mean (u A)");
    }
  }
  for (const auto& way : ways) {
    ddp::Options options;
    way.options(options);
    Planted model(elements);
    ddp::DistributedDataParallel wrapped(model, pg, options);
    if (way.hook) wrapped->register_comm_hook(way.hook());
    wrapped(gradient_of(rank, elements)).backward();
    const torch::Tensor error = (model->p.grad().to(torch::kDouble) - exact).abs() / (a * unit_roundoff(way.dtype));
    if (rank == 0) {
      const double max = error.max().item<double>();
      const double mean = error.mean().item<double>();
      if (markdown) {
        std::printf("| %d | %s | %.3f | %.3f |\n", n, way.name.c_str(), max, mean);
      } else {
        std::printf("%-32s %12.3f %12.3f\n", way.name.c_str(), max, mean);
      }
    }
  }
  return 0;
}
