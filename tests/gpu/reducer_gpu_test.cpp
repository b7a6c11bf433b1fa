// The reducer on CUDA (NCCL, one GPU per rank): gradients equal single-process
// autograd, unused parameters, gradient_as_bucket_view, bfloat16 parameters.
#include <catch2/catch.hpp>

#include <ddp/hooks.h>

#include "models.h"
#include "world.h"

namespace {

using ddp::test::max_relative_error;

// The bound behind the tolerance (world.h, reduction_tolerance) counts roundings in the
// parameters' dtype; it needs cuBLAS to compute float32 GEMMs in float32 (no TF32, which
// TORCH_ALLOW_TF32_CUBLAS_OVERRIDE can switch on) and to accumulate bfloat16 GEMMs in
// float32 (no reduced-precision split-K, LibTorch's default). Set for the test, restored.
class ExactCuBlas {
 public:
  ExactCuBlas() : tf32_(at::globalContext().allowTF32CuBLAS()), bf16_(at::globalContext().allowBF16ReductionCuBLAS()) {
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowBF16ReductionCuBLAS(false, false);
  }
  ~ExactCuBlas() {
    at::globalContext().setAllowTF32CuBLAS(tf32_);
    at::globalContext().setAllowBF16ReductionCuBLAS(
        bf16_ == at::CuBLASReductionOption::AllowReducedPrecisionWithSplitK,
        bf16_ != at::CuBLASReductionOption::DisallowReducedPrecisionDisallowSplitK);
  }

 private:
  bool tf32_;
  at::CuBLASReductionOption bf16_;
};

// The tolerance for iteration `it` of the Mlp trained on 4 * n samples. float32: the
// Mlp's chain (models.h, MlpImpl::reduction_terms) at float32's unit roundoff, extended
// over the earlier iterations (world.h, gradient_terms_at). bfloat16: GEMMs and
// reductions accumulate in float32 and round each output to bfloat16 once, so the bound
// is that float32 chain plus, at bfloat16's unit roundoff, the operations that round to
// bfloat16: the fc1, fc2, fc3 outputs (3); the logits' gradient cast back to bfloat16,
// fc3 dX, fc2 dX, fc1 dW (4); NCCL's ring sum over n ranks, one rounding per hop (n - 1);
// the division by the world size (1): 7 + n per iteration, 2 per SGD update.
double tolerance_at(torch::Dtype dtype, int n, int it) {
  double tolerance = ddp::test::reduction_tolerance(
      at::kFloat, ddp::test::gradient_terms_at(ddp::test::MlpImpl::reduction_terms(4 * n), it));
  if (dtype == torch::kBFloat16) {
    tolerance += ddp::test::reduction_tolerance(at::kBFloat16, ddp::test::gradient_terms_at(7 + n, it));
  }
  return tolerance;
}

// `hook`: registered before the first step; `extra`: its own rounding, added to the bound.
template <typename Holder>
void check_against_oracle(ddp::Options options, torch::Dtype dtype, std::shared_ptr<ddp::CommHook> hook = nullptr,
                          double extra = 0) {
  ExactCuBlas exact_cublas;
  auto pg = ddp::test::world_ptr();
  const auto device = ddp::test::world_device();
  const int n = pg->size();
  const int r = pg->rank();
  torch::manual_seed(3);
  Holder oracle;
  torch::manual_seed(3);
  Holder local;
  oracle->to(device, dtype);
  local->to(device, dtype);
  ddp::DistributedDataParallel model(local, pg, options);
  if (hook) model->register_comm_hook(hook);
  torch::optim::SGD opt(local->parameters(), 0.1);
  torch::optim::SGD oracle_opt(oracle->parameters(), 0.1);
  for (int it = 0; it < 3; ++it) {
    CAPTURE(it);
    const double tolerance = tolerance_at(dtype, n, it) + (it + 1) * extra;
    CAPTURE(tolerance);
    torch::manual_seed(50 + it);
    auto x = torch::randn({4 * n, 8}).to(device, dtype);
    auto y = torch::randint(4, {4 * n}).to(device);
    opt.zero_grad();
    oracle_opt.zero_grad();
    auto out = model(x.narrow(0, 4 * r, 4));
    torch::nn::functional::cross_entropy(out.to(torch::kFloat), y.narrow(0, 4 * r, 4)).backward();
    torch::nn::functional::cross_entropy(oracle->forward(x).to(torch::kFloat), y).backward();
    auto got = ddp::test::gradients_of(*local);
    auto want = ddp::test::gradients_of(*oracle);
    for (size_t i = 0; i < got.size(); ++i) {
      CAPTURE(got[i].first);
      REQUIRE(got[i].second.defined());
      CHECK(got[i].second.device() == device);
      CHECK(max_relative_error(got[i].second, want[i].second) <= tolerance);
      CHECK(ddp::test::identical_across_ranks(got[i].second));
    }
    opt.step();
    oracle_opt.step();
  }
}

} // namespace

TEST_CASE("CUDA: DDP gradients equal single-process autograd", "[gpu][reducer]") {
  for (double cap : {1e-6, 25.0}) {
    CAPTURE(cap);
    ddp::Options o = ddp::test::test_options();
    o.first_bucket_cap_mb(cap);
    o.bucket_cap_mb(cap);
    check_against_oracle<ddp::test::Mlp>(o, torch::kFloat);
  }
}

TEST_CASE("CUDA: communication hooks on the GPU (allreduce, fp16, bf16)", "[gpu][reducer][hooks]") {
  const int n = ddp::test::world_ptr()->size();
  // The allreduce hook is the reducer's own arithmetic; the compressions round each rank's
  // share and each of the n - 1 additions once more in their format (2n - 1 roundings).
  check_against_oracle<ddp::test::Mlp>(ddp::test::test_options(), torch::kFloat, ddp::hooks::allreduce());
  check_against_oracle<ddp::test::Mlp>(ddp::test::test_options(), torch::kFloat, ddp::hooks::fp16_compress(),
                                       ddp::test::reduction_tolerance(at::kHalf, 2 * n - 1));
  check_against_oracle<ddp::test::Mlp>(ddp::test::test_options(), torch::kFloat, ddp::hooks::bf16_compress(),
                                       ddp::test::reduction_tolerance(at::kBFloat16, 2 * n - 1));
}

TEST_CASE("CUDA: PowerSGD trains with the same parameters on every rank", "[gpu][reducer][hooks]") {
  ddp::hooks::PowerSGDOptions options;
  options.matrix_approximation_rank(2);
  options.start_powerSGD_iter(0);
  auto hook = ddp::hooks::powersgd(options);
  ddp::test::Mlp net;
  net->to(ddp::test::world_device());
  ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), ddp::test::test_options());
  model->register_comm_hook(hook);
  torch::optim::SGD opt(net->parameters(), 0.1);
  for (int it = 0; it < 4; ++it) {
    torch::manual_seed(70 + it + 10 * ddp::test::world_ptr()->rank());
    opt.zero_grad();
    auto x = torch::randn({4, 8}).to(ddp::test::world_device());
    auto y = torch::randint(4, {4}).to(ddp::test::world_device());
    torch::nn::functional::cross_entropy(model(x), y).backward();
    for (const auto& p : net->parameters()) {
      CHECK(torch::isfinite(p.grad()).all().item<bool>());
      CHECK(ddp::test::identical_across_ranks(p.grad()));
    }
    opt.step();
  }
  CHECK(model->reducer().stats().hook_bytes_per_iteration < model->reducer().stats().bytes_per_iteration);
}

TEST_CASE("CUDA: gradient_as_bucket_view makes .grad alias the bucket", "[gpu][reducer]") {
  ddp::Options o = ddp::test::test_options();
  o.gradient_as_bucket_view(true);
  check_against_oracle<ddp::test::Mlp>(o, torch::kFloat);
  ddp::test::Mlp net;
  net->to(ddp::test::world_device());
  ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), o);
  model(torch::randn({2, 8}, torch::TensorOptions().device(ddp::test::world_device()))).sum().backward();
  const auto& g1 = net->fc1->weight.grad();
  const auto& g3 = net->fc3->weight.grad();
  // One bucket: both gradients live in the same storage.
  CHECK(g1.is_alias_of(g3));
}

TEST_CASE("CUDA: bfloat16 parameters reduce in bfloat16", "[gpu][reducer]") {
  ddp::Options o = ddp::test::test_options();
  check_against_oracle<ddp::test::Mlp>(o, torch::kBFloat16);
}

TEST_CASE("CUDA: unused parameters keep .grad untouched and are named", "[gpu][reducer]") {
  struct TwoHeadsImpl : torch::nn::Module {
    TwoHeadsImpl() {
      a = register_module("a", torch::nn::Linear(4, 4));
      b = register_module("b", torch::nn::Linear(4, 4));
    }
    std::vector<torch::Tensor> forward(torch::Tensor x) { return {a(x), b(x)}; }
    torch::nn::Linear a{nullptr}, b{nullptr};
  };
  auto net = std::make_shared<TwoHeadsImpl>();
  net->to(ddp::test::world_device());
  for (bool find_unused : {false, true}) {
    ddp::Options o = ddp::test::test_options();
    o.find_unused_parameters(find_unused);
    for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
    ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), o);
    auto outs = model(torch::ones({2, 4}, torch::TensorOptions().device(ddp::test::world_device())));
    outs[0].sum().backward(); // b returned but unused
    CHECK(model->reducer().unused_parameters() == std::vector<std::string>{"b.weight", "b.bias"});
    CHECK_FALSE(net->b->weight.grad().defined());
    CHECK(torch::allclose(net->a->bias.grad().cpu(), torch::full({4}, 2.0)));
  }
}
