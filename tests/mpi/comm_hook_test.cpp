// Communication hooks (Reducer::register_comm_hook, ddp::hooks): each built-in against
// an average computed here in double from every rank's known gradient; PowerSGD exact on
// gradients of rank r; the options and unused parameters unchanged under a hook; a hook
// of the user's own; a hook that throws, on every rank or on one; registration misuse;
// hook state across a checkpoint.
#include <catch2/catch.hpp>

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>

#include <ddp/hooks.h>

#include <ddp/join.h>

#include "misuse_fixtures.h"
#include "models.h"
#include "throw_in_backward.h"
#include "world.h"

using ddp::test::FailingHook;

namespace {

using ddp::test::identical_across_ranks;
using ddp::test::reduction_tolerance;
using ddp::test::unit_roundoff;
using ddp::test::world;

// Three parameters: a matrix PowerSGD compresses, a bias (one dimension: sent as is) and a
// small matrix that would not shrink (sent as is).
struct Params {
  Params() {
    torch::manual_seed(3);
    named = {{"w", torch::randn({48, 40}).requires_grad_()},
             {"b", torch::randn({40}).requires_grad_()},
             {"small", torch::randn({3, 2}).requires_grad_()}};
  }
  std::vector<torch::Tensor> tensors() const {
    std::vector<torch::Tensor> out;
    for (const auto& [name, p] : named) out.push_back(p);
    return out;
  }
  ddp::Reducer::NamedParameters named;
};

// Rank r's gradient of parameter k in iteration `it`; every rank can compute every
// rank's, so the expected average comes from here, not from the code under test.
torch::Tensor known_gradient(const torch::Tensor& p, size_t k, int rank, int it) {
  torch::manual_seed(100000 + 1000 * it + 10 * static_cast<int64_t>(k) + rank);
  return torch::randn(p.sizes());
}

// One synchronised step whose gradients are exactly `grads` (loss = sum <p, g>).
void step(ddp::Reducer& reducer, const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads) {
  for (const auto& p : params) p.mutable_grad() = torch::Tensor();
  reducer.prepare_for_forward();
  torch::Tensor loss = torch::zeros({});
  for (size_t k = 0; k < params.size(); ++k) loss = loss + (params[k] * grads[k]).sum();
  reducer.prepare_for_backward({loss});
  loss.backward();
}

std::vector<torch::Tensor> my_gradients(const std::vector<torch::Tensor>& params, int it) {
  std::vector<torch::Tensor> out;
  for (size_t k = 0; k < params.size(); ++k) out.push_back(known_gradient(params[k], k, world().rank(), it));
  return out;
}

// Tiny caps: one parameter per bucket, so bucket indices mean something.
ddp::Options small_buckets() {
  ddp::Options o = ddp::test::test_options();
  o.first_bucket_cap_mb(1e-5);
  o.bucket_cap_mb(1e-5);
  return o;
}

// Params and a Reducer over them (tiny buckets) with `hook` registered.
struct Hooked {
  explicit Hooked(std::shared_ptr<ddp::CommHook> hook)
      : tensors(params.tensors()), reducer(params.named, ddp::test::world_ptr(), small_buckets()) {
    reducer.register_comm_hook(std::move(hook));
  }
  Params params;
  std::vector<torch::Tensor> tensors;
  ddp::Reducer reducer;
};

// The largest |actual - expected| / bound over the elements (<= 1 passes).
double worst_ratio(const torch::Tensor& actual, const torch::Tensor& expected, const torch::Tensor& bound) {
  return ((actual.to(torch::kDouble) - expected).abs() / bound).max().item<double>();
}

TEST_CASE("fp16 and bf16 compression: each gradient within the format's rounding of the exact average", "[hooks]") {
  const int n = world().size();
  for (auto [hook, dtype] : {std::pair{ddp::hooks::fp16_compress(), torch::kHalf},
                             std::pair{ddp::hooks::bf16_compress(), torch::kBFloat16}}) {
    CAPTURE(hook->name());
    Hooked hooked(hook);
    auto& params = hooked.params;
    auto& tensors = hooked.tensors;
    auto& reducer = hooked.reducer;
    for (int it = 0; it < 3; ++it) {
      CAPTURE(it);
      step(reducer, tensors, my_gradients(tensors, it));
      const double u = unit_roundoff(dtype);
      for (size_t k = 0; k < tensors.size(); ++k) {
        CAPTURE(params.named[k].first);
        torch::Tensor exact = torch::zeros(tensors[k].sizes(), torch::kDouble);
        torch::Tensor magnitude = torch::zeros_like(exact);
        for (int r = 0; r < n; ++r) {
          torch::Tensor g = known_gradient(tensors[k], k, r, it).to(torch::kDouble) / n;
          exact += g;
          magnitude += g.abs();
        }
        // Each rank's share is rounded once to the format, each of the n - 1 additions
        // once more (the sum is done in float and rounded back): at most 2n - 1 roundings
        // of at most u times the sum of the magnitudes; plus the format's subnormal
        // spacing for values near zero (float16: 2^-24), once per rounding.
        const double tiny = dtype == torch::kHalf ? std::ldexp(1.0, -24) : 0.0;
        torch::Tensor bound = (2 * n - 1) * u * magnitude + (2 * n - 1) * tiny + 1e-300;
        CHECK(worst_ratio(tensors[k].grad(), exact, bound) <= 1.0);
        CHECK(identical_across_ranks(tensors[k].grad()));
      }
      // Half the bytes of the float32 buckets went on the link.
      CHECK(reducer.stats().hook_bytes_per_iteration * 2 == reducer.stats().bytes_per_iteration);
    }
  }
}

// PowerSGD's approximation itself: compressing from the first step, each step from a new
// orthonormal Q, without the error feedback (which adds each rank's residual, of the same
// rank-r structure, to the next step's gradient; the checkpoint and training tests cover it).
ddp::hooks::PowerSGDOptions plain_powersgd(int64_t rank) {
  ddp::hooks::PowerSGDOptions options;
  options.matrix_approximation_rank(rank);
  options.start_powerSGD_iter(0);
  options.warm_start(false);
  options.use_error_feedback(false);
  return options;
}

// The bound for PowerSGD's rank-r approximation of a rows x cols average `exact` of rank r,
// summed over `world` ranks. Rounding along the longest chain in float: M Q (cols terms),
// the sum over ranks (world), Gram-Schmidt (a rows-term norm and r projections of rows
// terms each), M^T P (rows terms), the sum over ranks (world), P Q^T (r terms), the
// division (1). Gram-Schmidt loses orthogonality in proportion to the square of P's
// condition number (Giraud, Langou, Rozloznik 2005), which for an orthonormal Q is at most
// the average's kappa = sigma_1 / sigma_r: the bound is scaled by kappa^2.
double powersgd_tolerance(const torch::Tensor& exact, int64_t rank, int world_size) {
  const torch::Tensor sigma = torch::linalg_svdvals(exact);
  const double kappa = (sigma[0] / sigma[rank - 1]).item<double>();
  const int64_t rows = exact.size(0);
  const int64_t cols = exact.size(1);
  const int64_t terms = cols + world_size + rows * (rank + 1) + rows + world_size + rank + 1;
  return reduction_tolerance(torch::kFloat, terms) * kappa * kappa;
}

TEST_CASE("PowerSGD reproduces the exact average of gradients of rank r, and sends (n + m) r per matrix", "[hooks]") {
  const int n = world().size();
  const int64_t rank = 4;
  Hooked hooked(ddp::hooks::powersgd(plain_powersgd(rank)));
  auto& params = hooked.params;
  auto& tensors = hooked.tensors;
  auto& reducer = hooked.reducer;
  // Rank r's gradient of w is U A_r: every sum of them has rank <= 4.
  torch::manual_seed(11);
  const torch::Tensor u_basis = torch::randn({48, rank});
  auto gradients_of = [&](int r, int it) {
    std::vector<torch::Tensor> g;
    torch::manual_seed(500 + 10 * it + r);
    g.push_back(torch::matmul(u_basis, torch::randn({rank, 40})));
    g.push_back(known_gradient(tensors[1], 1, r, it));
    g.push_back(known_gradient(tensors[2], 2, r, it));
    return g;
  };
  for (int it = 0; it < 4; ++it) {
    CAPTURE(it);
    step(reducer, tensors, gradients_of(world().rank(), it));
    for (size_t k = 0; k < tensors.size(); ++k) {
      CAPTURE(params.named[k].first);
      torch::Tensor exact = torch::zeros(tensors[k].sizes(), torch::kDouble);
      for (int r = 0; r < n; ++r) exact += gradients_of(r, it)[k].to(torch::kDouble) / n;
      // w: powersgd_tolerance; b and small are sent as they are: the division and n - 1
      // additions.
      const double tolerance =
          k == 0 ? powersgd_tolerance(exact, rank, n) : reduction_tolerance(torch::kFloat, n + 1);
      CHECK(ddp::test::max_relative_error(tensors[k].grad(), exact) <= tolerance);
      CHECK(identical_across_ranks(tensors[k].grad()));
    }
    // w travels as P (48 x 4) and Q (40 x 4); b (40) and small (3 x 2) as they are.
    CHECK(reducer.stats().hook_bytes_per_iteration == 4 * ((48 + 40) * rank + 40 + 6));
  }
  // A gradient of rank above r is not reproduced: the check above can tell.
  step(reducer, tensors, my_gradients(tensors, 9));
  torch::Tensor full_rank = torch::zeros(tensors[0].sizes(), torch::kDouble);
  for (int r = 0; r < n; ++r) full_rank += known_gradient(tensors[0], 0, r, 9).to(torch::kDouble) / n;
  CHECK(ddp::test::max_relative_error(tensors[0].grad(), full_rank) > 0.1);
}

// A matrix above PowerSGDHook::kBatchMaxElements (or alone of its shape) is reduced where
// it lies in the bucket; smaller ones of one shape are gathered into a batch: the same
// property on both paths.
TEST_CASE("PowerSGD reproduces rank-r averages in place and in same-shape batches", "[hooks]") {
  const int n = world().size();
  const int64_t rank = 4;
  torch::manual_seed(4);
  ddp::Reducer::NamedParameters named{{"big", torch::randn({300, 240}).requires_grad_()},
                                      {"w", torch::randn({48, 40}).requires_grad_()},
                                      {"w2", torch::randn({48, 40}).requires_grad_()}};
  std::vector<torch::Tensor> tensors{named[0].second, named[1].second, named[2].second};
  ddp::Reducer reducer(named, ddp::test::world_ptr(), ddp::test::test_options()); // one bucket
  reducer.register_comm_hook(ddp::hooks::powersgd(plain_powersgd(rank)));
  torch::manual_seed(12);
  const std::vector<torch::Tensor> bases{torch::randn({300, rank}), torch::randn({48, rank}), torch::randn({48, rank})};
  auto gradients_of = [&](int r, int it) {
    torch::manual_seed(900 + 10 * it + r);
    return std::vector<torch::Tensor>{torch::matmul(bases[0], torch::randn({rank, 240})),
                                      torch::matmul(bases[1], torch::randn({rank, 40})),
                                      torch::matmul(bases[2], torch::randn({rank, 40}))};
  };
  for (int it = 0; it < 2; ++it) {
    step(reducer, tensors, gradients_of(world().rank(), it));
    for (size_t k = 0; k < 3; ++k) {
      CAPTURE(it, k);
      torch::Tensor exact = torch::zeros(tensors[k].sizes(), torch::kDouble);
      for (int r = 0; r < n; ++r) exact += gradients_of(r, it)[k].to(torch::kDouble) / n;
      CHECK(ddp::test::max_relative_error(tensors[k].grad(), exact) <= powersgd_tolerance(exact, rank, n));
      CHECK(identical_across_ranks(tensors[k].grad()));
    }
    CHECK(reducer.stats().hook_bytes_per_iteration == 4 * ((300 + 240) * rank + 2 * (48 + 40) * rank));
  }
}

TEST_CASE("PowerSGD keeps its state by parameter name", "[hooks]") {
  ddp::hooks::PowerSGDOptions options;
  options.matrix_approximation_rank(2);
  options.start_powerSGD_iter(0);
  auto hook = ddp::hooks::powersgd(options);
  Hooked hooked(hook);
  auto& tensors = hooked.tensors;
  auto& reducer = hooked.reducer;
  for (int it = 0; it < 3; ++it) step(reducer, tensors, my_gradients(tensors, it));
  CHECK(reducer.stats().bucket_rebuilds == 1);
  std::map<std::string, torch::Tensor> state;
  for (const auto& [key, value] : hook->state()) state[key] = value;
  std::set<std::string> keys;
  for (const auto& [key, value] : state) keys.insert(key);
  // The iteration count, and w's Q and error feedback (b and small are sent as they are).
  CHECK(keys == std::set<std::string>{"iteration", "q.w", "error.w"});
  CHECK(state["iteration"].item<int64_t>() == 3);
  CHECK(state["q.w"].sizes() == torch::IntArrayRef{40, 2});
  CHECK(state["error.w"].sizes() == torch::IntArrayRef{48, 40});
  CHECK_THROWS_WITH(hook->load_state({{"x.w", torch::zeros({1})}}), Catch::Contains("'x.w'"));
}

// Gradients equal to the reducer's own all-reduce, bit for bit: the built-in allreduce
// hook, with the options that change the reduction's bookkeeping and an unused parameter.
TEST_CASE("the allreduce hook gives the reducer's own gradients bit for bit, with every option", "[hooks]") {
  struct Case {
    const char* name;
    bool find_unused, as_view, static_graph, no_sync;
    double in_place_min_mb = -1; // 0.001: w (7.5 KiB) is reduced in its .grad, the hook handed it
  };
  for (const Case c : {Case{"plain", false, false, false, false}, Case{"find_unused_parameters", true, false, false, false},
                       Case{"gradient_as_bucket_view", false, true, false, false},
                       Case{"static_graph", false, false, true, false}, Case{"no_sync", false, false, false, true},
                       Case{"in_place_min_mb", false, false, false, false, 0.001}}) {
    CAPTURE(c.name);
    std::vector<std::vector<torch::Tensor>> results;
    for (bool with_hook : {false, true}) {
      Params params;
      auto tensors = params.tensors();
      ddp::Options o = small_buckets();
      o.find_unused_parameters(c.find_unused);
      o.gradient_as_bucket_view(c.as_view);
      o.static_graph(c.static_graph);
      o.in_place_min_mb(c.in_place_min_mb);
      ddp::Reducer reducer(params.named, ddp::test::world_ptr(), o);
      if (with_hook) reducer.register_comm_hook(ddp::hooks::allreduce());
      for (int it = 0; it < 3; ++it) {
        // "small" gets no gradient on any rank: its .grad stays as it was.
        auto grads = my_gradients(tensors, it);
        std::vector<torch::Tensor> used{tensors[0], tensors[1]};
        std::vector<torch::Tensor> used_grads{grads[0], grads[1]};
        if (c.no_sync) {
          reducer.set_require_sync(false);
          step(reducer, used, used_grads);
          reducer.set_require_sync(true);
          // The synchronised step after it reduces the accumulated sum.
          reducer.prepare_for_forward();
          torch::Tensor loss = (tensors[0] * grads[0]).sum() + (tensors[1] * grads[1]).sum();
          reducer.prepare_for_backward({loss});
          loss.backward();
        } else {
          step(reducer, used, used_grads);
        }
        CHECK_FALSE(tensors[2].grad().defined());
      }
      CHECK(reducer.unused_parameters() == std::vector<std::string>{"small"});
      results.push_back({tensors[0].grad().clone(), tensors[1].grad().clone()});
    }
    for (size_t k = 0; k < 2; ++k) CHECK(torch::equal(results[0][k], results[1][k]));
  }
}

// A hook of the user's own (docs/api.md shows it): every rank's bucket goes to every rank
// by allgather, rank 0 sums them in rank order, and broadcasts the sum: the same result on
// every rank whatever the MPI library's reduction order.
class ReduceAtRootHook final : public ddp::CommHook {
 public:
  std::string name() const override { return "reduce_at_root"; }
  std::shared_ptr<ddp::CommFuture> run(ddp::GradBucket& bucket) override {
    ddp::ProcessGroup& group = bucket.process_group();
    at::Tensor buffer = bucket.buffer();
    std::vector<at::Tensor> rows;
    for (int r = 0; r < group.size(); ++r) rows.push_back(torch::empty_like(buffer));
    auto gathered = group.allgather(rows, buffer);
    return ddp::CommFuture::of(gathered, buffer)->then([&group, rows, buffer](const at::Tensor&) {
      if (group.rank() == 0) {
        buffer.zero_();
        for (const auto& row : rows) buffer.add_(row);
      }
      return ddp::CommFuture::of(group.broadcast(buffer, 0), buffer);
    });
  }
};

TEST_CASE("a hook of the user's own: reduce at rank 0 and broadcast", "[hooks]") {
  const int n = world().size();
  Hooked hooked(std::make_shared<ReduceAtRootHook>());
  auto& params = hooked.params;
  auto& tensors = hooked.tensors;
  auto& reducer = hooked.reducer;
  for (int it = 0; it < 2; ++it) {
    step(reducer, tensors, my_gradients(tensors, it));
    for (size_t k = 0; k < tensors.size(); ++k) {
      torch::Tensor exact = torch::zeros(tensors[k].sizes(), torch::kDouble);
      for (int r = 0; r < n; ++r) exact += known_gradient(tensors[k], k, r, it).to(torch::kDouble) / n;
      // n roundings: the division, n - 1 additions.
      CHECK(ddp::test::max_relative_error(tensors[k].grad(), exact) <= reduction_tolerance(torch::kFloat, n + 1));
      CHECK(identical_across_ranks(tensors[k].grad()));
    }
  }
  // What went through the hook's group: n rows gathered (the input counted once) and one
  // broadcast, per bucket.
  CHECK(reducer.stats().hook_bytes_per_iteration == 2 * 4 * (48 * 40 + 40 + 6));
}


TEST_CASE("a hook that throws is a ReductionError on every rank naming the hook and the bucket", "[hooks]") {
  const int n = world().size();
  struct Case {
    const char* name;
    bool every_rank;
    bool in_continuation;
  };
  for (const Case c : {Case{"every rank, in run()", true, false}, Case{"every rank, in its continuation", true, true},
                       Case{"the last rank only, in run()", false, false}}) {
    CAPTURE(c.name);
    std::set<int> ranks;
    for (int r = 0; r < n; ++r) {
      if (c.every_rank || r == n - 1) ranks.insert(r);
    }
    Hooked hooked(std::make_shared<FailingHook>(ranks, /*iteration=*/1, /*bucket=*/1, c.in_continuation));
    auto& params = hooked.params;
  auto& tensors = hooked.tensors;
    auto& reducer = hooked.reducer;
    step(reducer, tensors, my_gradients(tensors, 0));
    auto error_of_step = [&](int it) {
      try {
        step(reducer, tensors, my_gradients(tensors, it));
      } catch (const ddp::ReductionError& e) {
        return std::string(e.what());
      }
      return std::string();
    };
    std::string message = error_of_step(1);
    const char* mode = std::getenv("DDP_STEP_CHECK");
    const bool deferred = mode != nullptr && std::string(mode) == "deferred";
    if (deferred) {
      // Deferred: a rank whose own step went right reads the others' statuses at its next
      // reducer call, and then the reducer stops on every rank (docs/semantics.md).
      const std::string next = error_of_step(2);
      CHECK_FALSE(next.empty());
      if (message.empty()) message = next;
    }
    CAPTURE(message);
    CHECK_THAT(message, Catch::Contains("'failing'") && Catch::Contains("bucket 1"));
    if (ranks.count(world().rank())) {
      CHECK_THAT(message, Catch::Contains("injected failure"));
    } else {
      CHECK_THAT(message, Catch::Contains(fmt::format("rank {}'s communication hook", n - 1)));
    }
    if (deferred) continue;
    // Strict: the ranks are still in step, and the next step is averaged as usual.
    step(reducer, tensors, my_gradients(tensors, 2));
    torch::Tensor exact = torch::zeros(tensors[0].sizes(), torch::kDouble);
    for (int r = 0; r < n; ++r) exact += known_gradient(tensors[0], 0, r, 2).to(torch::kDouble) / n;
    CHECK(ddp::test::max_relative_error(tensors[0].grad(), exact) <= reduction_tolerance(torch::kFloat, n + 1));
  }
}

TEST_CASE("register_comm_hook: once, before the first forward, the same hook on every rank", "[hooks][strict-only]") {
  const int n = world().size();
  const int rank = world().rank();
  SECTION("a null hook, a second hook, a hook after the first forward") {
    Params params;
    auto tensors = params.tensors();
    ddp::Reducer reducer(params.named, ddp::test::world_ptr(), small_buckets());
    CHECK_THROWS_WITH(reducer.register_comm_hook(nullptr), Catch::Contains("the hook is null"));
    reducer.register_comm_hook(ddp::hooks::fp16_compress());
    CHECK_THROWS_WITH(reducer.register_comm_hook(ddp::hooks::allreduce()),
                      Catch::Contains("'fp16_compress' is already registered"));
    Params other;
    auto other_tensors = other.tensors();
    ddp::Reducer late(other.named, ddp::test::world_ptr(), small_buckets());
    step(late, other_tensors, my_gradients(other_tensors, 0));
    CHECK_THROWS_AS(late.register_comm_hook(ddp::hooks::allreduce()), ddp::InvalidArgumentError);
    CHECK_THROWS_WITH(late.register_comm_hook(ddp::hooks::allreduce()),
                      Catch::Contains("before the first forward") && Catch::Contains(fmt::format("rank {}", rank)));
  }
  SECTION("different hooks on different ranks: ModelMismatchError naming both") {
    Params params;
    ddp::Reducer reducer(params.named, ddp::test::world_ptr(), small_buckets());
    auto hook = rank == n - 1 ? ddp::hooks::bf16_compress() : ddp::hooks::fp16_compress();
    std::string message;
    try {
      reducer.register_comm_hook(hook);
    } catch (const ddp::ModelMismatchError& e) {
      message = e.what();
    }
    CHECK_THAT(message, Catch::Contains("registered different communication hooks") &&
                            Catch::Contains("rank 0 has fp16_compress") &&
                            Catch::Contains(fmt::format("rank {} has bf16_compress", n - 1)));
  }
  SECTION("one rank registers and another does not: an error on both, naming it") {
    Params params;
    auto tensors = params.tensors();
    ddp::Reducer reducer(params.named, ddp::test::world_ptr(), small_buckets());
    std::string message;
    try {
      if (rank == n - 1) {
        reducer.register_comm_hook(ddp::hooks::fp16_compress());
      } else {
        step(reducer, tensors, my_gradients(tensors, 0));
      }
    } catch (const ddp::ReductionError& e) {
      message = e.what();
    }
    CHECK_THAT(message, Catch::Contains("registering a communication hook"));
  }
}

TEST_CASE("PowerSGD state survives a checkpoint: a restored hook goes on as the original", "[hooks]") {
  ddp::hooks::PowerSGDOptions options;
  options.matrix_approximation_rank(2);
  options.start_powerSGD_iter(1);
  // Trains `steps` steps from `start`; with `restore`, loads it into a new hook first.
  auto train = [&](const std::vector<torch::Tensor>& initial, int start, int steps, const std::string* restore,
                   std::string* save) {
    Params params;
    auto tensors = params.tensors();
    {
      torch::NoGradGuard no_grad;
      for (size_t k = 0; k < tensors.size(); ++k) tensors[k].copy_(initial[k]);
    }
    auto hook = ddp::hooks::powersgd(options);
    if (restore) {
      std::istringstream in(*restore);
      torch::serialize::InputArchive archive;
      archive.load_from(in);
      ddp::CommHook::State state;
      for (const auto& key : archive.keys()) {
        torch::Tensor value;
        archive.read(key, value);
        state.emplace_back(key, value);
      }
      hook->load_state(state);
    }
    ddp::Reducer reducer(params.named, ddp::test::world_ptr(), small_buckets());
    reducer.register_comm_hook(hook);
    torch::optim::SGD opt(tensors, 0.01);
    for (int it = start; it < start + steps; ++it) {
      step(reducer, tensors, my_gradients(tensors, it));
      opt.step();
    }
    if (save) {
      torch::serialize::OutputArchive archive;
      for (const auto& [key, value] : hook->state()) archive.write(key, value);
      std::ostringstream out;
      archive.save_to(out);
      *save = out.str();
    }
    std::vector<torch::Tensor> out;
    for (const auto& t : tensors) out.push_back(t.detach().clone());
    return std::make_pair(out, tensors[0].grad().clone());
  };
  Params initial_params;
  const auto initial = initial_params.tensors();
  // Uninterrupted: 6 steps. Checkpointed: 3 steps, save, then 3 steps with a new reducer
  // and hook (whose buckets are laid out anew) restored from the checkpoint.
  const auto whole = train(initial, 0, 6, nullptr, nullptr);
  std::string checkpoint;
  const auto first = train(initial, 0, 3, nullptr, &checkpoint);
  const auto resumed = train(first.first, 3, 3, &checkpoint, nullptr);
  const auto fresh = train(first.first, 3, 3, nullptr, nullptr);
  // The same arithmetic on the same values; only the packing of P and Q in the collectives
  // differs (each element's sum over the ranks may go in another order): a few roundings.
  const double tolerance = reduction_tolerance(torch::kFloat, 64);
  const double resumed_error = ddp::test::max_relative_error(resumed.second, whole.second.to(torch::kDouble));
  const double fresh_error = ddp::test::max_relative_error(fresh.second, whole.second.to(torch::kDouble));
  CAPTURE(resumed_error, fresh_error, tolerance);
  CHECK(resumed_error <= tolerance);
  // Without the state (no error feedback, a new Q) the same steps go elsewhere: the check
  // above can tell.
  CHECK(fresh_error > 100 * tolerance);
  CHECK(identical_across_ranks(resumed.second));
}

// Uneven inputs under ddp::Join with each hook: the shadowed steps run the hook on zeros,
// every rank ends with the same parameters, and the allreduce hook's are the reducer's own.
TEST_CASE("Join with a hook: uneven inputs end with the same parameters on every rank", "[hooks]") {
  const int n = world().size();
  const int rank = world().rank();
  ddp::hooks::PowerSGDOptions powersgd;
  powersgd.matrix_approximation_rank(2);
  powersgd.start_powerSGD_iter(0);
  std::vector<std::pair<std::string, std::function<std::shared_ptr<ddp::CommHook>()>>> hooks = {
      {"none", [] { return nullptr; }},
      {"allreduce", [] { return ddp::hooks::allreduce(); }},
      {"fp16", [] { return ddp::hooks::fp16_compress(); }},
      {"powersgd", [&] { return ddp::hooks::powersgd(powersgd); }},
      {"reduce_at_root", [] { return std::make_shared<ReduceAtRootHook>(); }}};
  std::vector<torch::Tensor> reference; // with no hook
  for (const auto& [label, make] : hooks) {
    CAPTURE(label);
    torch::manual_seed(5);
    ddp::test::Mlp local;
    ddp::DistributedDataParallel model(local, ddp::test::world_ptr(), ddp::test::test_options());
    if (auto hook = make()) model->register_comm_hook(hook);
    torch::optim::SGD opt(local->parameters(), 0.1);
    const int batches = rank == n - 1 ? 2 : 5;
    {
      ddp::Join join(model);
      for (int b = 0; b < batches; ++b) {
        torch::manual_seed(300 + 10 * rank + b);
        opt.zero_grad();
        torch::nn::functional::cross_entropy(model(torch::randn({4, 8})), torch::randint(4, {4})).backward();
        opt.step();
      }
      join.join();
    }
    std::vector<torch::Tensor> params;
    for (const auto& p : local->parameters()) {
      CHECK(identical_across_ranks(p));
      params.push_back(p.detach().clone());
    }
    if (label == "none") reference = params;
    if (label == "allreduce") {
      for (size_t k = 0; k < params.size(); ++k) CHECK(torch::equal(params[k], reference[k]));
    }
  }
}

// A parameter no rank used hands PowerSGD an all-zero matrix: its state must stay finite
// (0 / 0 in the orthogonalisation would poison Q and the error feedback for good).
TEST_CASE("PowerSGD: a parameter unused on every rank for a while is averaged once it is used", "[hooks]") {
  const int n = world().size();
  ddp::hooks::PowerSGDOptions options;
  options.start_powerSGD_iter(1);
  auto hook = ddp::hooks::powersgd(options);
  Hooked hooked(hook);
  auto& tensors = hooked.tensors;
  auto& reducer = hooked.reducer;
  for (int it = 0; it < 3; ++it) {
    auto grads = my_gradients(tensors, it);
    step(reducer, {tensors[1], tensors[2]}, {grads[1], grads[2]}); // w unused on every rank
    CHECK_FALSE(tensors[0].grad().defined());
  }
  for (const auto& [key, value] : hook->state()) {
    CAPTURE(key);
    if (value.is_floating_point()) CHECK(torch::isfinite(value).all().item<bool>());
  }
  step(reducer, tensors, my_gradients(tensors, 3));
  REQUIRE(tensors[0].grad().defined());
  CHECK(torch::isfinite(tensors[0].grad()).all().item<bool>());
  CHECK(identical_across_ranks(tensors[0].grad()));
  // The exactly sent ones (b, small) are the average.
  for (size_t k = 1; k < 3; ++k) {
    torch::Tensor exact = torch::zeros(tensors[k].sizes(), torch::kDouble);
    for (int r = 0; r < n; ++r) exact += known_gradient(tensors[k], k, r, 3).to(torch::kDouble) / n;
    CHECK(ddp::test::max_relative_error(tensors[k].grad(), exact) <= reduction_tolerance(torch::kFloat, n + 1));
  }
}

// Three collectives per bucket, two of them from continuations, each a 1-element
// all-reduce of a tag naming its bucket and step: a tag summed with another's shows
// collectives that paired wrongly.
class TaggedStepsHook final : public ddp::CommHook {
 public:
  std::string name() const override { return "tagged_steps"; }
  std::shared_ptr<ddp::CommFuture> run(ddp::GradBucket& bucket) override {
    ddp::ProcessGroup* group = &bucket.process_group();
    at::Tensor buffer = bucket.buffer();
    const size_t b = bucket.index();
    auto tagged = [this, group, b](int s) {
      at::Tensor t = torch::full({1}, tag(b, s));
      return ddp::CommFuture::of(group->allreduce(t), t);
    };
    group->allreduce(buffer); // completes before the tags: collectives complete in order
    return tagged(1)
        ->then([this, tagged, b, group](const at::Tensor& v) {
          check(v, b, 1, group->size());
          return tagged(2);
        })
        ->then([this, tagged, b, group](const at::Tensor& v) {
          check(v, b, 2, group->size());
          return tagged(3);
        })
        ->then_map([this, buffer, b, group](const at::Tensor& v) {
          check(v, b, 3, group->size());
          return buffer;
        });
  }
  std::vector<std::string> mismatches;

 private:
  static float tag(size_t b, int s) { return static_cast<float>(1 + 10 * b + s); }
  void check(const at::Tensor& v, size_t b, int s, int world_size) {
    const float got = v.item<float>();
    if (got != world_size * tag(b, s)) mismatches.push_back(fmt::format("bucket {} step {}: {}", b, s, got));
  }
};

TEST_CASE("an exception in one rank's backward: a hook's continuations still pair up", "[hooks][strict-only]") {
  const int n = world().size();
  Params params;
  auto tensors = params.tensors();
  auto hook = std::make_shared<TaggedStepsHook>();
  ddp::Reducer reducer(params.named, ddp::test::world_ptr(), small_buckets());
  reducer.register_comm_hook(hook);
  step(reducer, tensors, my_gradients(tensors, 0));
  // Rank 0's backward raises after its later buckets launched (w's gradient is the last
  // to arrive): the next forward completes the section the way finalize does.
  std::string first;
  try {
    for (const auto& p : tensors) p.mutable_grad() = torch::Tensor();
    reducer.prepare_for_forward();
    auto grads = my_gradients(tensors, 1);
    torch::Tensor loss = ddp::test::ThrowInBackward::apply((tensors[0] * grads[0]).sum(), world().rank() == 0) +
                         (tensors[1] * grads[1]).sum() + (tensors[2] * grads[2]).sum();
    reducer.prepare_for_backward({loss});
    loss.backward();
  } catch (const std::exception& e) {
    first = e.what();
  }
  CHECK_FALSE(first.empty());
  std::string second;
  try {
    step(reducer, tensors, my_gradients(tensors, 2));
  } catch (const ddp::ReductionError& e) {
    second = e.what();
  }
  if (world().rank() == 0) {
    // Its forward raised before anything ran: it takes that batch again.
    CHECK_THAT(second, Catch::Contains("did not finish"));
    step(reducer, tensors, my_gradients(tensors, 2));
  } else {
    CHECK(second.empty());
  }
  // Back in step: the next one is averaged.
  step(reducer, tensors, my_gradients(tensors, 3));
  torch::Tensor exact = torch::zeros(tensors[1].sizes(), torch::kDouble);
  for (int r = 0; r < n; ++r) exact += known_gradient(tensors[1], 1, r, 3).to(torch::kDouble) / n;
  CHECK(ddp::test::max_relative_error(tensors[1].grad(), exact) <= reduction_tolerance(torch::kFloat, n + 1));
  CAPTURE(hook->mismatches);
  CHECK(hook->mismatches.empty());
}

} // namespace
