// Gradient equivalence: N-rank DDP gradients equal single-process autograd (the oracle)
// on the same data, for several models, bucket caps and iterations with SGD steps, and
// parameters stay bit-identical across ranks. "Equal" is within the rounding-error bound
// of the model's arithmetic (tests/support/world.h, reduction_tolerance).
#include <catch2/catch.hpp>

#include "models.h"
#include "world.h"

namespace {

using ddp::test::gradient_terms_at;
using ddp::test::identical_across_ranks;
using ddp::test::max_relative_error;
using ddp::test::parameter_terms_after;
using ddp::test::reduction_tolerance;
using ddp::test::world;

constexpr int64_t kShard = 6; // samples per rank

struct Batch {
  torch::Tensor x;
  torch::Tensor y;
};

// Every rank generates the same full batch; rank r trains on rows [r*kShard, (r+1)*kShard).
Batch full_batch(int iteration, int world_size, std::vector<int64_t> sample_shape, int64_t classes) {
  torch::manual_seed(1000 + iteration);
  std::vector<int64_t> shape{kShard * world_size};
  shape.insert(shape.end(), sample_shape.begin(), sample_shape.end());
  return {torch::randn(shape), torch::randint(classes, {kShard * world_size})};
}

torch::Tensor shard(const torch::Tensor& t, int rank) {
  return t.narrow(0, rank * kShard, kShard);
}

// Runs `iterations` steps of DDP and of the oracle side by side and checks gradients and
// parameters after every step. per_shard_oracle: the oracle averages per-shard losses
// (needed with BatchNorm, whose statistics are per rank in DDP); otherwise it uses the
// concatenated batch with a mean loss. `terms`: the model's rounding errors per iteration
// (its reduction_terms, see world.h); the tolerance is reduction_tolerance at the least
// precise parameter dtype, the batch is made in the first parameter's dtype.
template <typename Holder>
void check_equivalence(std::function<Holder()> make, ddp::Options options, std::vector<int64_t> sample_shape,
                       int64_t classes, bool per_shard_oracle, int64_t terms, int iterations = 4) {
  auto& pg = world();
  const int n = pg.size();
  const int r = pg.rank();
  torch::manual_seed(7);
  Holder oracle = make();
  torch::manual_seed(7 + r); // different on every rank: DDP must broadcast rank 0's state
  Holder local = make();
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < local->parameters().size(); ++i) {
      if (r == 0) local->parameters()[i].copy_(oracle->parameters()[i]);
    }
    for (size_t i = 0; i < local->buffers().size(); ++i) {
      if (r == 0) local->buffers()[i].copy_(oracle->buffers()[i]);
    }
  }
  ddp::DistributedDataParallel model(local, ddp::test::world_ptr(), options);
  for (const auto& p : local->parameters()) REQUIRE(identical_across_ranks(p));
  torch::optim::SGD ddp_opt(local->parameters(), 0.1);
  torch::optim::SGD oracle_opt(oracle->parameters(), 0.1);
  const at::ScalarType dtype = ddp::test::least_precise_dtype(local->parameters());

  for (int it = 0; it < iterations; ++it) {
    CAPTURE(it);
    const double grad_tolerance = reduction_tolerance(dtype, gradient_terms_at(terms, it));
    const double param_tolerance = reduction_tolerance(dtype, parameter_terms_after(terms, it));
    CAPTURE(grad_tolerance, param_tolerance);
    Batch batch = full_batch(it, n, sample_shape, classes);
    batch.x = batch.x.to(local->parameters().front().scalar_type());
    ddp_opt.zero_grad();
    auto out = model(shard(batch.x, r));
    torch::nn::functional::cross_entropy(out, shard(batch.y, r)).backward();

    oracle_opt.zero_grad();
    if (per_shard_oracle) {
      torch::Tensor loss = torch::zeros({});
      for (int q = 0; q < n; ++q) {
        loss = loss + torch::nn::functional::cross_entropy(oracle->forward(shard(batch.x, q)), shard(batch.y, q));
      }
      (loss / n).backward();
    } else {
      torch::nn::functional::cross_entropy(oracle->forward(batch.x), batch.y).backward();
    }

    auto got = ddp::test::gradients_of(*local);
    auto want = ddp::test::gradients_of(*oracle);
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      CAPTURE(got[i].first);
      REQUIRE(got[i].second.defined());
      CHECK(max_relative_error(got[i].second, want[i].second) <= grad_tolerance);
      CHECK(identical_across_ranks(got[i].second));
    }
    ddp_opt.step();
    oracle_opt.step();
    const auto params = local->named_parameters();
    const auto oracle_params = oracle->named_parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      CAPTURE(params[i].key());
      CHECK(identical_across_ranks(params[i].value()));
      CHECK(max_relative_error(params[i].value(), oracle_params[i].value()) <= param_tolerance);
    }
  }
  CHECK(model->reducer().stats().iterations == iterations);
  CHECK(model->reducer().unused_parameters().empty());
}

ddp::Options with_caps(double first_mb, double cap_mb) {
  ddp::Options o = ddp::test::test_options();
  o.first_bucket_cap_mb(first_mb);
  o.bucket_cap_mb(cap_mb);
  return o;
}

} // namespace

TEST_CASE("MLP gradients equal single-process autograd for tiny to huge buckets", "[grad]") {
  // tiny: one parameter per bucket; default; huge: a single bucket.
  for (auto [first, cap] : {std::pair{1e-6, 1e-6}, std::pair{1.0, 25.0}, std::pair{1e4, 1e4}, std::pair{2e-3, 4e-3}}) {
    CAPTURE(first, cap);
    check_equivalence<ddp::test::Mlp>([] { return ddp::test::Mlp(); }, with_caps(first, cap), {8}, 4, false,
                                      ddp::test::MlpImpl::reduction_terms(kShard * world().size()));
  }
}

TEST_CASE("bucket_cap_mb_list and first_iteration_one_bucket: gradients equal single-process autograd", "[grad]") {
  // A list whose first cap holds one tensor and whose later caps vary; the first iteration
  // in one bucket, then the default caps or the list.
  std::vector<ddp::Options> cases{ddp::test::test_options().bucket_cap_mb_list({1e-6, 1e-3, 1e-4}),
                                  ddp::test::test_options().first_iteration_one_bucket(true),
                                  ddp::test::test_options().first_iteration_one_bucket(true).bucket_cap_mb_list(
                                      {1e-6, 1e-3, 1e-4})};
  for (size_t c = 0; c < cases.size(); ++c) {
    CAPTURE(c);
    check_equivalence<ddp::test::Mlp>([] { return ddp::test::Mlp(); }, cases[c], {8}, 4, false,
                                      ddp::test::MlpImpl::reduction_terms(kShard * world().size()));
  }
  // The layouts the options say: fc3.bias (16 bytes) closes bucket 0 alone at the 1e-6 MiB
  // cap; the first iteration's single bucket holds all six parameters.
  ddp::test::Mlp net;
  ddp::DistributedDataParallel listed(net, ddp::test::world_ptr(), cases[0]);
  CHECK(listed->reducer().bucket_layout().front() == std::vector<std::string>{"fc3.bias"});
  ddp::test::Mlp other;
  ddp::DistributedDataParallel one(other, ddp::test::world_ptr(), cases[1]);
  REQUIRE(one->reducer().bucket_layout().size() == 1);
  CHECK(one->reducer().bucket_layout().front().size() == 6);
}

TEST_CASE("float64 parameters: gradients equal the oracle to float64 precision", "[grad]") {
  auto make = [] {
    ddp::test::Mlp m;
    m->to(torch::kDouble);
    return m;
  };
  for (auto [first, cap] : {std::pair{1e-6, 1e-6}, std::pair{1.0, 25.0}}) {
    CAPTURE(first, cap);
    check_equivalence<ddp::test::Mlp>(make, with_caps(first, cap), {8}, 4, false,
                                      ddp::test::MlpImpl::reduction_terms(kShard * world().size()));
  }
}

TEST_CASE("gradients reduced in place in .grad (no bucket copies) equal the oracle", "[grad]") {
  // in_place_min_mb small enough that every MLP tensor (>= 64 bytes) qualifies when alone.
  for (auto [first, cap] : {std::pair{1e-6, 1e-6}, std::pair{1.0, 25.0}}) {
    CAPTURE(first, cap);
    ddp::Options o = with_caps(first, cap);
    o.in_place_min_mb(1e-5);
    check_equivalence<ddp::test::Mlp>([] { return ddp::test::Mlp(); }, o, {8}, 4, false,
                                      ddp::test::MlpImpl::reduction_terms(kShard * world().size()));
  }
  // The default threshold (1 MiB on CPU) with a layer that reaches it: 512 x 512 floats.
  struct WideImpl : torch::nn::Module {
    WideImpl() {
      a = register_module("a", torch::nn::Linear(8, 512));
      b = register_module("b", torch::nn::Linear(512, 512));
      c = register_module("c", torch::nn::Linear(512, 4));
    }
    torch::Tensor forward(torch::Tensor x) { return c(torch::tanh(b(torch::tanh(a(x))))); }
    torch::nn::Linear a{nullptr}, b{nullptr}, c{nullptr};
  };
  // a.weight's chain (world.h's counting rules): forward a 8+1, tanh 1, b 512+1, tanh 1,
  // c 512+1; cross_entropy over 4 classes 2*4+8 = 16; backward c dX 4, tanh' 2, b dX
  // 512, tanh' 2; a dW over the global batch; the division by the world size 1.
  const int64_t wide_terms = 1574 + kShard * world().size();
  check_equivalence<std::shared_ptr<WideImpl>>([] { return std::make_shared<WideImpl>(); }, with_caps(1.0, 25.0), {8},
                                               4, false, wide_terms, 3);
  auto net = std::make_shared<WideImpl>();
  ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), with_caps(1.0, 25.0));
  // b.weight (1 MiB) travels alone; the rest share buckets.
  auto layout = model->reducer().bucket_layout();
  CHECK(std::count(layout.begin(), layout.end(), std::vector<std::string>{"b.weight"}) == 1);
  net->b->weight.mutable_grad() = torch::zeros_like(net->b->weight);
  const void* storage = net->b->weight.grad().data_ptr();
  model(torch::ones({2, 8})).sum().backward();
  CHECK(net->b->weight.grad().data_ptr() == storage); // reduced where it was computed
  CHECK(ddp::test::identical_across_ranks(net->b->weight.grad()));
}

TEST_CASE("bucket caps decide the number of buckets", "[grad]") {
  auto make = [] { return ddp::test::Mlp(); };
  ddp::test::Mlp tiny_net = make();
  ddp::DistributedDataParallel tiny(tiny_net, ddp::test::world_ptr(), with_caps(1e-6, 1e-6));
  CHECK(tiny->reducer().stats().buckets == 6);
  CHECK(tiny->reducer().bucket_layout().front() == std::vector<std::string>{"fc3.bias"});
  ddp::test::Mlp huge_net = make();
  ddp::DistributedDataParallel huge(huge_net, ddp::test::world_ptr(), with_caps(1e4, 1e4));
  CHECK(huge->reducer().stats().buckets == 1);
  CHECK(huge->reducer().bucket_layout().front().size() == 6);
}

TEST_CASE("CNN with BatchNorm: gradients equal the oracle, buffers come from rank 0", "[grad]") {
  for (auto [first, cap] : {std::pair{1e-6, 1e-6}, std::pair{1.0, 25.0}}) {
    CAPTURE(first, cap);
    const int64_t terms = ddp::test::ConvNetImpl::reduction_terms(kShard, kShard * world().size());
    check_equivalence<ddp::test::ConvNet>([] { return ddp::test::ConvNet(); }, with_caps(first, cap), {3, 6, 6}, 5,
                                          true, terms);
  }
}

TEST_CASE("float32 and float64 parameters reduce in separate buckets, equal to the oracle", "[grad]") {
  for (auto [first, cap] : {std::pair{1e-6, 1e-6}, std::pair{1e4, 1e4}}) {
    CAPTURE(first, cap);
    const int64_t terms = ddp::test::MixedDtypeImpl::reduction_terms(kShard * world().size());
    check_equivalence<ddp::test::MixedDtype>([] { return ddp::test::MixedDtype(); }, with_caps(first, cap), {8}, 4,
                                             false, terms);
  }
  ddp::test::MixedDtype net;
  ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), with_caps(1e4, 1e4));
  CHECK(model->reducer().stats().buckets == 2); // one per dtype even with a huge cap
}

TEST_CASE("gradient_as_bucket_view: .grad aliases the bucket and equals the oracle", "[grad]") {
  ddp::Options o = with_caps(1e-3, 1e-3);
  o.gradient_as_bucket_view(true);
  check_equivalence<ddp::test::Mlp>([] { return ddp::test::Mlp(); }, o, {8}, 4, false,
                                    ddp::test::MlpImpl::reduction_terms(kShard * world().size()));
}

namespace {
// A module whose buffer is set differently on every rank, and whose forward reads it.
struct WithBufferImpl : torch::nn::Module {
  WithBufferImpl() {
    lin = register_module("lin", torch::nn::Linear(4, 4));
    scale = register_buffer("scale", torch::ones({4}));
  }
  torch::Tensor forward(torch::Tensor x) { return lin(x) * scale; }
  torch::nn::Linear lin{nullptr};
  torch::Tensor scale;
};
TORCH_MODULE(WithBuffer);
} // namespace

TEST_CASE("broadcast_buffers sends rank 0's buffers before each forward", "[grad]") {
  WithBuffer net;
  ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), ddp::test::test_options());
  const int r = world().rank();
  for (int it = 0; it < 3; ++it) {
    {
      torch::NoGradGuard g;
      net->scale.fill_(static_cast<float>(100 * it + r + 1));
    }
    model(torch::ones({2, 4})).sum().backward();
    CHECK(net->scale[0].item<float>() == static_cast<float>(100 * it + 1));
  }
  ddp::Options off = ddp::test::test_options();
  off.broadcast_buffers(false);
  WithBuffer net2;
  ddp::DistributedDataParallel model2(net2, ddp::test::world_ptr(), off);
  {
    torch::NoGradGuard g;
    net2->scale.fill_(static_cast<float>(r + 1));
  }
  model2(torch::ones({2, 4})).sum().backward();
  CHECK(net2->scale[0].item<float>() == static_cast<float>(r + 1));
}

TEST_CASE("ddp::Reducer works on its own for a named parameter list", "[grad]") {
  auto& pg = world();
  torch::manual_seed(3);
  auto w = torch::randn({5, 3}, torch::requires_grad());
  auto b = torch::randn({5}, torch::requires_grad());
  auto frozen = torch::randn({5});
  ddp::Reducer reducer({{"w", w}, {"b", b}, {"frozen", frozen}}, ddp::test::world_ptr(), ddp::test::test_options());
  CHECK(reducer.parameter_names() == std::vector<std::string>{"w", "b"}); // frozen: skipped
  reducer.prepare_for_forward();
  auto x = torch::full({2, 3}, static_cast<float>(pg.rank() + 1));
  auto out = torch::matmul(x, w.t()) + b;
  reducer.prepare_for_backward({out});
  out.sum().backward();
  // d/dw of sum(x w^T + b) = column sums of x, per output row: 2 * (r + 1); mean over ranks.
  const double mean_x = (pg.size() + 1) / 2.0;
  CHECK(torch::allclose(w.grad(), torch::full({5, 3}, 2.0 * mean_x)));
  CHECK(torch::allclose(b.grad(), torch::full({5}, 2.0)));
}

namespace {
// Layers registered in the opposite order of their use: reverse registration order is
// then the wrong guess of the gradient-ready order, and the rebuild must fix it.
struct ReversedImpl : torch::nn::Module {
  ReversedImpl() {
    last = register_module("last", torch::nn::Linear(8, 4));
    middle = register_module("middle", torch::nn::Linear(8, 8));
    first = register_module("first", torch::nn::Linear(8, 8));
  }
  torch::Tensor forward(torch::Tensor x) { return last(torch::tanh(middle(torch::tanh(first(x))))); }
  torch::nn::Linear last{nullptr}, middle{nullptr}, first{nullptr};
};
TORCH_MODULE(Reversed);
} // namespace

TEST_CASE("buckets are rebuilt once, in the observed ready order, the same on every rank", "[grad]") {
  Reversed net;
  ddp::Options o = with_caps(1e-6, 1e-6); // one parameter per bucket: the layout is the order
  ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), o);
  const auto initial = model->reducer().bucket_layout();
  CHECK(initial.front() == std::vector<std::string>{"first.bias"}); // reverse registration guess
  for (int it = 0; it < 3; ++it) model(torch::randn({2, 8})).sum().backward();
  CHECK(model->reducer().stats().bucket_rebuilds == 1);
  const auto rebuilt = model->reducer().bucket_layout();
  // The backward reaches `last` first and `first` last.
  CHECK((rebuilt.front()[0] == "last.bias" || rebuilt.front()[0] == "last.weight"));
  CHECK((rebuilt.back()[0] == "first.weight" || rebuilt.back()[0] == "first.bias"));
  std::string joined;
  for (const auto& b : rebuilt) joined += b[0] + ";";
  at::Tensor bytes = at::from_blob(joined.data(), {static_cast<int64_t>(joined.size())}, at::kByte).clone();
  CHECK(ddp::test::identical_across_ranks(bytes));
}

TEST_CASE("bucket_cap_autotune: gradients equal the oracle through its rebuilds; every rank takes rank 0's choice",
          "[grad]") {
  // One parameter per bucket, a few per bucket, one bucket; one timed iteration each: the
  // choice is made at the end of iteration 3, with the ranks' real (differing) timings.
  const auto tune = ddp::BucketCapAutotune().candidates_mb({1e-6, 1e-3, 1e4}).warmup_iterations(0)
                        .iterations_per_candidate(1);
  check_equivalence<ddp::test::Mlp>([] { return ddp::test::Mlp(); },
                                    with_caps(1e-6, 25).bucket_cap_autotune(tune), {8}, 4, false,
                                    ddp::test::MlpImpl::reduction_terms(kShard * world().size()), /*iterations=*/6);
  ddp::test::Mlp net;
  ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), with_caps(1e-6, 25).bucket_cap_autotune(tune));
  for (int it = 0; it < 5; ++it) model(torch::randn({2, 8})).sum().backward();
  const double chosen = model->reducer().stats().autotuned_bucket_cap_mb;
  CHECK((chosen == 1e-6 || chosen == 1e-3 || chosen == 1e4));
  CHECK(model->reducer().stats().autotune_iterations == 4);
  CHECK(identical_across_ranks(torch::tensor({chosen}, torch::kDouble)));
  std::string layout;
  for (const auto& b : model->reducer().bucket_layout()) {
    for (const auto& name : b) layout += name + ",";
    layout += ";";
  }
  at::Tensor bytes = at::from_blob(layout.data(), {static_cast<int64_t>(layout.size())}, at::kByte).clone();
  CHECK(identical_across_ranks(bytes));
}
