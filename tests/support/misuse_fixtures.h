// Models and helpers shared by the misuse tests that run under mpirun (tests/mpi/) and
// their ports to thread ranks (tests/unit/thread_ranks_*_test.cpp): one copy, so that both
// layers check the same cases. Expected values are closed forms, never the code under test.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <set>
#include <vector>
#include <stdexcept>
#include <string>

#include <ddp/ddp.h>

#include "throw_in_backward.h"
#include "world.h"

namespace ddp::test {

// Options whose timeout bounds a misuse case tightly: a detection that failed shows up as
// a TimeoutError (a failed check), not as a hang.
inline ddp::Options short_timeout() {
  ddp::Options o = ddp::test::test_options();
  o.timeout(std::chrono::seconds(10));
  return o;
}

// An option that shapes the collectives, set differently on rank 1: its name, the change,
// and the value the error must show for rank 1 (misuse_test and thread_ranks_misuse_test).
struct OptionMismatch {
  std::string name;
  std::function<void(ddp::Options&)> change;
  std::string value;
};

inline std::vector<OptionMismatch> option_mismatches() {
  return {
      {"bucket_cap_mb", [](ddp::Options& o) { o.bucket_cap_mb(10); }, "10"},
      {"first_bucket_cap_mb", [](ddp::Options& o) { o.first_bucket_cap_mb(2); }, "2"},
      {"bucket_cap_mb_list", [](ddp::Options& o) { o.bucket_cap_mb_list({1, 4.5}); }, "[1, 4.5]"},
      {"first_iteration_one_bucket", [](ddp::Options& o) { o.first_iteration_one_bucket(true); }, "true"},
      {"bucket_cap_autotune", [](ddp::Options& o) { o.bucket_cap_autotune(ddp::BucketCapAutotune()); },
       "candidates_mb=[1, 2, 4, 8, 16, 25], warmup_iterations=2, iterations_per_candidate=6"},
      {"gradient_as_bucket_view", [](ddp::Options& o) { o.gradient_as_bucket_view(true); }, "true"},
      {"in_place_min_mb", [](ddp::Options& o) { o.in_place_min_mb(0); }, "0"},
      {"broadcast_buffers", [](ddp::Options& o) { o.broadcast_buffers(false); }, "false"},
      {"init_sync", [](ddp::Options& o) { o.init_sync(false); }, "false"},
      {"static_graph", [](ddp::Options& o) { o.static_graph(true); }, "true"},
      {"reproducible", [](ddp::Options& o) { o.reproducible(true); }, "true"},
      {"wire_dtype", [](ddp::Options& o) { o.wire_dtype(at::kBFloat16); }, "BFloat16"},
      {"accumulate_dtype", [](ddp::Options& o) { o.accumulate_dtype(at::kDouble); }, "Double"},
  };
}

inline std::string rank_tag(int r) { return "[ddp rank " + std::to_string(r) + "]"; }

// A Linear's weight gradient for loss = sum(W x + b) over a batch of rows x: every row
// of dW is the sum of the batch's rows. Independent of the code under test.
inline at::Tensor linear_weight_grad(const at::Tensor& x, int64_t out_features) {
  return x.sum(0).unsqueeze(0).expand({out_features, x.size(1)}).contiguous();
}

inline at::Tensor input_of(int q) { return torch::full({2, 4}, static_cast<float>(q + 1)); }

// The average over ranks of linear_weight_grad(input_of(q)).
inline at::Tensor average_linear_weight_grad(int world, int64_t out_features) {
  at::Tensor sum = torch::zeros({out_features, 4});
  for (int q = 0; q < world; ++q) sum += linear_weight_grad(input_of(q), out_features);
  return sum / world;
}

// Linear -> (optional BatchNorm, for buffers) -> Linear; `fail_forward` throws in forward.
struct SmallNetImpl : torch::nn::Module {
  explicit SmallNetImpl(bool with_buffers) {
    a = register_module("a", torch::nn::Linear(4, 4));
    if (with_buffers) bn = register_module("bn", torch::nn::BatchNorm1d(4));
    b = register_module("b", torch::nn::Linear(4, 3));
  }
  torch::Tensor forward(torch::Tensor x) {
    if (fail_forward) {
      fail_forward = false;
      throw Injected();
    }
    x = a(x);
    if (bn) x = bn(x);
    return b(torch::tanh(x));
  }
  torch::nn::Linear a{nullptr}, b{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
  bool fail_forward = false;
};
TORCH_MODULE(SmallNet);

// Rank 1's frozen parameters differ from the others' in one way.
struct FrozenImpl : torch::nn::Module {
  FrozenImpl(const std::string& variant, int rank) {
    const bool odd = rank == 1;
    trunk = register_module("trunk", torch::nn::Linear(4, 4));
    frozen = register_module("frozen", torch::nn::Linear(4, odd && variant == "shape" ? 5 : 4));
    if (odd && variant == "dtype") frozen->to(torch::kDouble);
    if (odd && variant == "count") extra = register_module("extra", torch::nn::Linear(4, 4));
    for (auto& p : frozen->parameters()) p.requires_grad_(false);
    if (extra) {
      for (auto& p : extra->parameters()) p.requires_grad_(false);
    }
    if (odd && variant == "which") trunk->bias.requires_grad_(false);
  }
  torch::Tensor forward(torch::Tensor x) { return trunk(x); }
  torch::nn::Linear trunk{nullptr}, frozen{nullptr}, extra{nullptr};
};
TORCH_MODULE(Frozen);

// Linear -> ThrowInBackward -> Linear: `armed` makes the backward throw between the layers.
struct ThrowingNetImpl : torch::nn::Module {
  ThrowingNetImpl() {
    a = register_module("a", torch::nn::Linear(4, 4));
    b = register_module("b", torch::nn::Linear(4, 4));
  }
  torch::Tensor forward(torch::Tensor x) { return b(ThrowInBackward::apply(a(x), armed)); }
  torch::nn::Linear a{nullptr}, b{nullptr};
  bool armed = false;
};
TORCH_MODULE(ThrowingNet);

// Rank 1 builds a model that differs from the others' in one way.
struct TwoLayerImpl : torch::nn::Module {
  TwoLayerImpl(const std::string& variant, int rank) {
    const bool odd = rank == 1;
    a = register_module("a", torch::nn::Linear(4, odd && variant == "shape" ? 5 : 4));
    b = register_module(odd && variant == "name" ? "b_renamed" : "b", torch::nn::Linear(4, 4));
    if (odd && variant == "count") extra = register_module("extra", torch::nn::Linear(4, 4));
    if (odd && variant == "dtype") b->to(torch::kDouble);
  }
  torch::Tensor forward(torch::Tensor x) { return b(a(x)); }
  torch::nn::Linear a{nullptr}, b{nullptr}, extra{nullptr};
};
TORCH_MODULE(TwoLayer);

// Throws "injected failure" on bucket `bucket` of iteration `iteration` on the ranks in
// `ranks`, in run() or in its continuation, when the bucket holds anything but zeros (a
// check on the data, like a NaN check); all-reduces otherwise.
class FailingHook final : public ddp::CommHook {
 public:
  FailingHook(std::set<int> ranks, int64_t iteration, size_t bucket, bool in_continuation)
      : ranks_(std::move(ranks)), iteration_(iteration), bucket_(bucket), in_continuation_(in_continuation) {}
  std::string name() const override { return "failing"; }
  std::shared_ptr<ddp::CommFuture> run(ddp::GradBucket& bucket) override {
    const bool fail = ranks_.count(bucket.process_group().rank()) && bucket.iteration() == iteration_ &&
                      bucket.index() == bucket_ && bucket.buffer().abs().sum().item<double>() > 0;
    if (fail && !in_continuation_) throw std::runtime_error("injected failure");
    at::Tensor buffer = bucket.buffer();
    auto future = ddp::CommFuture::of(bucket.process_group().allreduce(buffer), buffer);
    if (!fail) return future;
    return future->then_map([](const at::Tensor&) -> at::Tensor { throw std::runtime_error("injected failure"); });
  }

 private:
  std::set<int> ranks_;
  int64_t iteration_;
  size_t bucket_;
  bool in_continuation_;
};

// What a rank saw when rank 1 did `variant` instead of step 2 of 5 training steps: the
// first libddp error, the step it was raised at, and what the next forward said (the
// error is sticky: the ranks stay out of step).
struct SkipOutcome {
  std::string message;
  int step = -1;
  std::string after;
};
inline SkipOutcome run_with_a_skipped_step(const std::shared_ptr<ProcessGroup>& pg, const std::string& variant,
                                           bool with_buffers, bool static_graph) {
  const int r = pg->rank();
  SmallNet net(with_buffers);
  ddp::Options o = short_timeout();
  o.static_graph(static_graph);
  ddp::DistributedDataParallel model(net, pg, o);
  for (int step = 0; step < 5; ++step) {
    try {
      const bool odd = r == 1 && step == 2;
      torch::Tensor x = torch::randn({4, 4});
      if (odd && variant == "no_sync on one rank") {
        auto guard = model->no_sync();
        model(x).sum().backward();
        continue;
      }
      if (odd && variant == "forward exception caught on one rank") {
        net->fail_forward = true;
        try {
          model(x);
        } catch (const Injected&) {
        }
        continue;
      }
      auto out = model(x);
      if (odd && variant == "loss without the outputs on one rank") {
        (torch::ones({1}, torch::requires_grad()) * 2).sum().backward();
        continue;
      }
      out.sum().backward();
    } catch (const ddp::ReductionError& e) {
      SkipOutcome seen{e.what(), step, "no error"};
      try {
        model(torch::randn({4, 4}));
      } catch (const ddp::Error& again) {
        seen.after = again.what();
      }
      return seen;
    }
  }
  return {};
}

// Ways one rank's own set-up can fail (rank 1 applies `break_rank1`), and what its
// error says: every rank must raise it from the construction exchange.
struct SetUpFailure {
  std::string what;
  std::function<void(torch::nn::Linear&, ddp::Options&)> break_rank1;
  std::string expect;
};
inline std::vector<SetUpFailure> set_up_failures() {
  return {
      {"every parameter frozen",
       [](torch::nn::Linear& lin, ddp::Options&) {
         for (auto& p : lin->parameters()) p.requires_grad_(false);
       },
       "no parameter requires grad"},
      {"bucket_cap_mb out of range", [](torch::nn::Linear&, ddp::Options& o) { o.bucket_cap_mb(0); },
       "Options::bucket_cap_mb = 0 is invalid"},
      {"in_place_min_mb out of range", [](torch::nn::Linear&, ddp::Options& o) { o.in_place_min_mb(-3); },
       "Options::in_place_min_mb = -3 is invalid"},
      {"a bucket_cap_mb_list entry out of range",
       [](torch::nn::Linear&, ddp::Options& o) { o.bucket_cap_mb_list({2, 0.5, 0}); },
       "Options::bucket_cap_mb_list[2] = 0 is invalid"},
  };
}

} // namespace ddp::test
