// DistributedDataParallel used as a LibTorch module (parameters for the optimizer,
// train/eval, torch::save), evaluation on one rank, and Options::init_sync, with the ranks
// as threads of this process at world 2 and 3. LibTorch's default generator is shared by
// the threads, so every value a check depends on is made on the main thread or from a
// seeded generator of its own.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <sstream>
#include <string>
#include <vector>

#include <ddp/ddp.h>
#include <ddp/hooks.h>
#include <ddp/join.h>

#include "misuse_fixtures.h"
#include "models.h"
#include "thread_ranks.h"
#include "world.h"

using Catch::Contains;
using ddp::test::run_ranks;
using PG = std::shared_ptr<ddp::ProcessGroup>;

namespace {

at::Tensor randn_from(uint64_t seed, at::IntArrayRef shape) {
  return torch::randn(shape, at::detail::createCPUGenerator(seed));
}

// Gives `module` the parameter and buffer values of `initial` (made on the main thread).
template <class Holder>
void copy_state(const Holder& initial, Holder& module) {
  torch::NoGradGuard no_grad;
  auto params = module->named_parameters();
  for (const auto& p : initial->named_parameters()) params[p.key()].copy_(p.value());
  auto buffers = module->named_buffers();
  for (const auto& b : initial->named_buffers()) buffers[b.key()].copy_(b.value());
}

template <class Results>
void require_ok(const Results& results) {
  for (const auto& r : results) {
    INFO("rank " << r.rank << " threw " << r.error_type << ": " << r.error);
    REQUIRE(r.ok());
  }
}

std::vector<std::string> keys_of(const torch::OrderedDict<std::string, at::Tensor>& dict) {
  std::vector<std::string> out;
  for (const auto& item : dict) out.push_back(item.key());
  return out;
}

} // namespace

TEST_CASE("thread ranks: DistributedDataParallel is used like the torch::nn::Module it wraps", "[threads][module]") {
  struct Seen {
    bool same_parameters = false;  // the same tensors, names and order as the wrapped module's
    bool same_buffers = false;
    bool trained_alike = false;    // an optimizer built from model->parameters() stepped every rank alike
    bool eval_reaches_module = false;
    bool train_reaches_module = false;
    bool keeps_submodule_mode = false; // a submodule put in eval mode before wrapping stays so
    std::string printed;
    bool loads_unwrapped = false;  // torch::save(model) loads into an unwrapped module
    bool wraps_loaded = false;     // a checkpoint of an unwrapped module, loaded before wrapping
    std::string load_error, to_error, clone_error;
  };
  auto results = run_ranks(2, [](int rank, PG pg) {
    Seen seen;
    ddp::test::SmallNet net(/*with_buffers=*/true);
    ddp::DistributedDataParallel model(net, pg, ddp::test::short_timeout());

    auto mine = model->named_parameters();
    auto theirs = net->named_parameters();
    seen.same_parameters = keys_of(mine) == keys_of(theirs) && mine.size() == theirs.size();
    for (size_t i = 0; seen.same_parameters && i < mine.size(); ++i) {
      seen.same_parameters = mine[i].value().is_same(theirs[i].value());
    }
    seen.same_buffers = keys_of(model->named_buffers()) == keys_of(net->named_buffers());

    torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    for (int step = 0; step < 3; ++step) {
      opt.zero_grad();
      model(randn_from(10 * step + rank, {6, 4})).pow(2).sum().backward();
      opt.step();
    }
    seen.trained_alike = true;
    for (const auto& p : model->parameters()) seen.trained_alike &= ddp::test::identical_across_ranks(p);

    model->eval();
    seen.eval_reaches_module = !model->is_training() && !net->is_training() && !net->bn->is_training();
    model->train();
    seen.train_reaches_module = model->is_training() && net->is_training() && net->bn->is_training();
    ddp::test::SmallNet frozen_bn(true);
    frozen_bn->bn->eval();
    ddp::DistributedDataParallel keeps(frozen_bn, pg, ddp::test::short_timeout());
    seen.keeps_submodule_mode = keeps->is_training() && !frozen_bn->bn->is_training();
    std::ostringstream printed;
    printed << *model;
    seen.printed = printed.str();

    // Saved from the wrapper, loaded into an unwrapped module: the same names and values.
    std::stringstream checkpoint;
    torch::save(model, checkpoint);
    ddp::test::SmallNet unwrapped(true);
    torch::load(unwrapped, checkpoint);
    seen.loads_unwrapped = true;
    auto loaded = unwrapped->named_parameters();
    for (const auto& p : net->named_parameters()) seen.loads_unwrapped &= torch::equal(loaded[p.key()], p.value());
    auto loaded_buffers = unwrapped->named_buffers();
    for (const auto& b : net->named_buffers()) seen.loads_unwrapped &= torch::equal(loaded_buffers[b.key()], b.value());

    // And back: the unwrapped module's checkpoint loads into a fresh module, then wrapped.
    std::stringstream plain;
    torch::save(unwrapped, plain);
    ddp::test::SmallNet fresh(true);
    torch::load(fresh, plain);
    ddp::DistributedDataParallel rewrapped(fresh, pg, ddp::test::short_timeout());
    seen.wraps_loaded = true;
    auto again = rewrapped->named_parameters();
    for (const auto& p : unwrapped->named_parameters()) seen.wraps_loaded &= torch::equal(again[p.key()], p.value());

    // What would break the hooks is an error that says what to do instead.
    try {
      std::stringstream copy;
      torch::save(model, copy);
      torch::load(model, copy);
    } catch (const ddp::InvalidArgumentError& e) {
      seen.load_error = e.what();
    }
    try {
      model->to(torch::kFloat64);
    } catch (const ddp::InvalidArgumentError& e) {
      seen.to_error = e.what();
    }
    try {
      model->clone();
    } catch (const ddp::InvalidArgumentError& e) {
      seen.clone_error = e.what();
    }
    return seen;
  });
  require_ok(results);
  for (const auto& r : results) {
    CAPTURE(r.rank);
    const Seen& seen = *r.value;
    CHECK(seen.same_parameters);
    CHECK(seen.same_buffers);
    CHECK(seen.trained_alike);
    CHECK(seen.eval_reaches_module);
    CHECK(seen.train_reaches_module);
    CHECK(seen.keeps_submodule_mode);
    CHECK_THAT(seen.printed, Contains("ddp::DistributedDataParallel(world_size=2, backend=threads"));
    CHECK_THAT(seen.printed, Contains("torch::nn::BatchNorm1d"));
    CHECK(seen.loads_unwrapped);
    CHECK(seen.wraps_loaded);
    CHECK_THAT(seen.load_error, Contains(ddp::test::rank_tag(r.rank)) && Contains("before wrapping"));
    CHECK_THAT(seen.to_error, Contains(ddp::test::rank_tag(r.rank)) && Contains("net->to(device)"));
    CHECK_THAT(seen.clone_error, Contains("wrap the copy"));
  }
}

TEST_CASE("thread ranks: one rank evaluates through the wrapper right after a training step", "[threads][module]") {
  // The trap this guards against: a forward that broadcasts buffers (PyTorch DDP's
  // first evaluation forward after a training step) on one rank alone would enter a
  // collective that no other rank joins. The thread group turns that into a CommError.
  for (int world : {2, 3}) {
    for (const bool under_no_grad : {false, true}) {
      CAPTURE(world, under_no_grad);
      ddp::test::SmallNet initial(/*with_buffers=*/true);
      const at::Tensor eval_input = randn_from(99, {5, 4});
      struct Seen {
        bool parameters_identical = false;
        bool buffers_identical = false;
        int64_t batches_tracked = 0;
        int64_t iterations = 0;
        bool evaluated = false;
      };
      auto results = run_ranks(world, [&](int rank, PG pg) {
        Seen seen;
        ddp::test::SmallNet net(true);
        copy_state(initial, net);
        ddp::DistributedDataParallel model(net, pg, ddp::test::short_timeout());
        torch::optim::SGD opt(model->parameters(), 0.05);
        auto step = [&](int s) {
          opt.zero_grad();
          model(randn_from(100 * s + rank, {6, 4})).pow(2).mean().backward();
          opt.step();
        };
        step(0);
        step(1);
        if (rank == 0) {
          if (under_no_grad) {
            // Train mode, grad mode off: BatchNorm updates rank 0's running statistics,
            // which the next training forward replaces by rank 0's own: still one state.
            torch::NoGradGuard no_grad;
            model(eval_input);
          } else {
            model->eval(); // grad mode on: a forward that could be differentiated
            model(eval_input);
            model->train();
          }
          seen.evaluated = true;
        }
        step(2);
        seen.parameters_identical = true;
        for (const auto& p : model->parameters()) seen.parameters_identical &= ddp::test::identical_across_ranks(p);
        // Running statistics differ after any training forward (each rank's own batch), but
        // the batch count shows whose buffers the last training forward started from: rank
        // 0's, which counted its evaluation forward in train mode too.
        seen.batches_tracked = net->bn->num_batches_tracked.item<int64_t>();
        seen.buffers_identical = ddp::test::identical_across_ranks(net->bn->num_batches_tracked);
        seen.iterations = model->reducer().stats().iterations;
        return seen;
      });
      require_ok(results);
      for (const auto& r : results) {
        CAPTURE(r.rank);
        CHECK(r.value->parameters_identical);
        CHECK(r.value->buffers_identical);
        CHECK(r.value->batches_tracked == (under_no_grad ? 4 : 3));
        CHECK(r.value->iterations == 3);
        CHECK(r.value->evaluated == (r.rank == 0));
      }
    }
  }
}

TEST_CASE("thread ranks: a backward through an eval-mode forward is an error that says to call train()",
          "[threads][module]") {
  auto results = run_ranks(2, [](int rank, PG pg) {
    ddp::test::SmallNet net(false);
    ddp::DistributedDataParallel model(net, pg, ddp::test::short_timeout());
    model(randn_from(rank, {3, 4})).sum().backward(); // one training step first
    model->eval();
    model(randn_from(7 + rank, {3, 4})).sum().backward();
  });
  for (const auto& r : results) {
    CAPTURE(r.rank);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error_type == "ddp::ReductionError");
    CHECK_THAT(r.error, Contains(ddp::test::rank_tag(r.rank)) && Contains("model->train()"));
  }
}

TEST_CASE("thread ranks: init_sync(false) skips the broadcast and checks that the ranks start alike",
          "[threads][module]") {
  ddp::test::SmallNet initial(/*with_buffers=*/true);
  for (int world : {2, 3}) {
    CAPTURE(world);
    // The same state everywhere: wrapping succeeds, and nothing was broadcast (a rank's
    // extra buffer value would have been overwritten by a broadcast; here none differs,
    // so the check is that training then stays in step).
    auto same = run_ranks(world, [&](int rank, PG pg) {
      ddp::test::SmallNet net(true);
      copy_state(initial, net);
      ddp::DistributedDataParallel model(net, pg, ddp::test::short_timeout().init_sync(false));
      model(randn_from(rank, {4, 4})).sum().backward();
      bool identical = true;
      for (const auto& p : net->parameters()) identical &= ddp::test::identical_across_ranks(p.grad());
      return identical;
    });
    require_ok(same);
    for (const auto& r : same) CHECK(*r.value);

    // The last rank starts from other weights: every rank names the tensor and the rank.
    auto differ = run_ranks(world, [&](int rank, PG pg) {
      ddp::test::SmallNet net(true);
      copy_state(initial, net);
      if (rank == world - 1) {
        torch::NoGradGuard no_grad;
        net->b->weight.add_(1.0);
      }
      ddp::DistributedDataParallel model(net, pg, ddp::test::short_timeout().init_sync(false));
    });
    for (const auto& r : differ) {
      CAPTURE(r.rank);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error_type == "ddp::ModelMismatchError");
      CHECK_THAT(r.error, Contains("'b.weight' on rank(s) " + std::to_string(world - 1) + " differs") &&
                              Contains("init_sync"));
    }

    // Ranks that disagree on init_sync would pair a broadcast with an allgather: the
    // construction check stops them first.
    auto mixed = run_ranks(world, [&](int rank, PG pg) {
      ddp::test::SmallNet net(true);
      copy_state(initial, net);
      ddp::DistributedDataParallel model(net, pg, ddp::test::short_timeout().init_sync(rank != 1));
    });
    for (const auto& r : mixed) {
      CAPTURE(r.rank);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error_type == "ddp::ModelMismatchError");
      CHECK_THAT(r.error, Contains("init_sync"));
    }
  }
}

TEST_CASE("Options, JoinOptions and PowerSGDOptions chain like LibTorch's options", "[module]") {
  const ddp::Options o = ddp::Options().bucket_cap_mb(10).find_unused_parameters(true).static_graph(true);
  CHECK(o.bucket_cap_mb() == 10);
  CHECK(o.find_unused_parameters());
  CHECK(o.static_graph());
  CHECK(o.first_bucket_cap_mb() == 1.0); // untouched defaults stay PyTorch's
  CHECK(o.broadcast_buffers());
  CHECK(o.init_sync());
  const auto j = ddp::JoinOptions().throw_on_early_termination(true);
  CHECK(j.enable());
  CHECK(j.throw_on_early_termination());
  const auto p = ddp::hooks::PowerSGDOptions().matrix_approximation_rank(4).start_powerSGD_iter(2);
  CHECK(p.matrix_approximation_rank() == 4);
  CHECK(p.start_powerSGD_iter() == 2);
  CHECK(p.use_error_feedback());
}
