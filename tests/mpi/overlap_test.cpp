// Overlap is real: with a backward that sleeps near the input, the first bucket's
// all-reduce completes before the backward pass ends. Order of events, no timing bound.
#include <catch2/catch.hpp>

#include <torch/csrc/autograd/custom_function.h>

#include "world.h"

namespace {

std::chrono::steady_clock::time_point g_slow_backward_end;

// Identity forward; backward sleeps, like an expensive first layer.
struct SlowIdentity : torch::autograd::Function<SlowIdentity> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, torch::Tensor x) { return x.clone(); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    g_slow_backward_end = std::chrono::steady_clock::now();
    return {grads[0]};
  }
};

struct SlowNetImpl : torch::nn::Module {
  SlowNetImpl() {
    first = register_module("first", torch::nn::Linear(16, 16));
    last = register_module("last", torch::nn::Linear(16, 16));
  }
  torch::Tensor forward(torch::Tensor x) {
    auto h = first(x);
    h = SlowIdentity::apply(h); // the sleep runs after last's gradient is ready, before first's
    return last(torch::relu(h));
  }
  torch::nn::Linear first{nullptr}, last{nullptr};
};
TORCH_MODULE(SlowNet);

} // namespace

TEST_CASE("the first bucket's collective completes while backward is still running", "[overlap]") {
  SlowNet net;
  ddp::Options o = ddp::test::test_options();
  o.first_bucket_cap_mb(1e-6); // `last` alone in bucket 0
  o.bucket_cap_mb(1e-6);
  ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), o);
  model->reducer().set_timeline_enabled(true);
  model(torch::randn({4, 16})).sum().backward();
  const auto& events = model->reducer().timeline().events();
  std::optional<ddp::Timeline::Event> first_collective, finalize;
  for (const auto& e : events) {
    if (e.kind == ddp::Timeline::Kind::kCollective && e.index == 0) first_collective = e;
    if (e.kind == ddp::Timeline::Kind::kFinalize) finalize = e;
  }
  REQUIRE(first_collective);
  REQUIRE(finalize);
  const auto layout = model->reducer().bucket_layout();
  CHECK(layout.front() == std::vector<std::string>{"last.bias"});
  // Bucket 0 was reduced before the slow node (early in the backward) finished...
  CHECK(first_collective->end < g_slow_backward_end);
  // ...and before finalize began.
  CHECK(first_collective->end < finalize->start);
}
