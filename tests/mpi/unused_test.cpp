// Unused parameters (the deep-supervision case): rank- and iteration-dependent head
// schedules, a never-used layer, outputs returned but not in the loss, a rank that
// uses no parameter at all; with and without find_unused_parameters, tiny and large
// buckets, static_graph, no_sync. The oracle is single-process autograd over all
// ranks' shards and schedules; parameters are compared after SGD steps.
#include <catch2/catch.hpp>

#include <torch/csrc/autograd/custom_function.h>

#include <random>

#include "models.h"
#include "world.h"

using Catch::Contains;
using ddp::test::identical_across_ranks;
using ddp::test::max_relative_error;

namespace {

constexpr int kHeads = 4;
constexpr int64_t kShard = 5;

// A trunk with an auxiliary head per depth; head 3 sits on an optional branch that is
// computed only when asked; `debug` is registered and never called.
struct DeepSupImpl : torch::nn::Module {
  DeepSupImpl() {
    for (int i = 0; i < 3; ++i) trunk.push_back(register_module("trunk" + std::to_string(i), torch::nn::Linear(6, 6)));
    for (int k = 0; k < kHeads; ++k) heads.push_back(register_module("head" + std::to_string(k), torch::nn::Linear(6, 3)));
    branch = register_module("branch", torch::nn::Linear(6, 6));
    debug = register_module("debug", torch::nn::Linear(6, 6));
  }
  // Returns every head's logits (head 3 only when `with_branch`) and a parameter-free output.
  std::tuple<std::vector<torch::Tensor>, torch::Tensor> forward(torch::Tensor x, bool with_branch) {
    std::vector<torch::Tensor> outs;
    auto h = x;
    for (int i = 0; i < 3; ++i) {
      h = torch::tanh(trunk[i](h));
      outs.push_back(heads[i](h));
    }
    if (with_branch) outs.push_back(heads[3](torch::tanh(branch(h))));
    return {outs, x * 2};
  }
  std::vector<torch::nn::Linear> trunk, heads;
  torch::nn::Linear branch{nullptr}, debug{nullptr};
};
TORCH_MODULE(DeepSup);

// Rounding errors along the longest chain feeding a gradient (trunk0.weight's, through
// the branch and head 3, gathering heads 2, 1, 0 on the way back), counted by the rules
// in world.h, reduction_tolerance:
//   forward  trunk0..2, branch, head3: 5 x (6+1); 4 tanh                      39
//   loss     cross_entropy over 3 classes 2*3+8 = 14; the head weight (k+1)*0.5: 2;
//            the oracle's total / world: 1                                   17
//   backward head3 dX 3, tanh' 2, branch dX 6, + head2's gradient 1, tanh' 2, trunk2
//            dX 6, + head1's 1, tanh' 2, trunk1 dX 6, + head0's 1, tanh' 2    32
//   dW       a sum over the global batch, in every micro-step      micro_steps B
//   average  the division by the world size                                   1
int64_t deep_sup_terms(int64_t global_batch, int micro_steps) { return 89 + micro_steps * global_batch; }

// Which heads rank q's loss uses in iteration `it`, and whether it computes the branch.
struct Schedule {
  std::vector<int> heads;
  bool with_branch;
};

using ScheduleFn = std::function<Schedule(int it, int q)>;

Schedule random_schedule(int it, int q) {
  std::mt19937 gen(1000u * it + 17u * q + 5u);
  Schedule s;
  s.with_branch = gen() % 2;
  for (int k = 0; k < kHeads; ++k) {
    if (k == 3 && !s.with_branch) continue;
    if (gen() % 3 != 0) s.heads.push_back(k); // each head in the loss 2/3 of the time
  }
  return s;
}

torch::Tensor loss_of(const std::vector<torch::Tensor>& outs, const torch::Tensor& skip, const Schedule& s,
                      const torch::Tensor& y) {
  torch::Tensor loss = skip.sum() * 0.01; // keeps the parameter-free output in every loss
  for (int k : s.heads) loss = loss + (k + 1) * 0.5 * torch::nn::functional::cross_entropy(outs[k], y);
  return loss;
}

struct RunConfig {
  ddp::Options options;
  ScheduleFn schedule = random_schedule;
  int iterations = 5;
  int micro_steps = 1; // > 1: the first micro_steps - 1 run under no_sync()
};

// Expected: names unused on every rank in iteration `it` (all micro-steps together).
std::vector<std::string> expected_unused(const DeepSup& net, const RunConfig& cfg, int it, int world) {
  std::set<std::string> used;
  for (int q = 0; q < world; ++q) {
    for (int m = 0; m < cfg.micro_steps; ++m) {
      Schedule s = cfg.schedule(it * cfg.micro_steps + m, q);
      // A head in the loss uses itself and the trunk up to its depth (all of it for 3).
      for (int k : s.heads) {
        used.insert("head" + std::to_string(k) + ".weight");
        used.insert("head" + std::to_string(k) + ".bias");
        for (int i = 0; i <= std::min(k, 2); ++i) {
          used.insert("trunk" + std::to_string(i) + ".weight");
          used.insert("trunk" + std::to_string(i) + ".bias");
        }
        if (k == 3) {
          used.insert("branch.weight");
          used.insert("branch.bias");
        }
      }
    }
  }
  std::vector<std::string> out;
  for (const auto& p : net->named_parameters()) {
    if (!used.count(p.key())) out.push_back(p.key());
  }
  return out;
}

void run_against_oracle(const RunConfig& cfg) {
  auto pg = ddp::test::world_ptr();
  const int n = pg->size();
  const int r = pg->rank();
  torch::manual_seed(11);
  DeepSup oracle;
  torch::manual_seed(11);
  DeepSup local;
  ddp::DistributedDataParallel model(local, pg, cfg.options);
  torch::optim::SGD opt(local->parameters(), 0.2);
  torch::optim::SGD oracle_opt(oracle->parameters(), 0.2);
  const at::ScalarType dtype = ddp::test::least_precise_dtype(local->parameters());
  const int64_t terms = deep_sup_terms(kShard * n, cfg.micro_steps);

  for (int it = 0; it < cfg.iterations; ++it) {
    CAPTURE(it);
    const double grad_tolerance = ddp::test::reduction_tolerance(dtype, ddp::test::gradient_terms_at(terms, it));
    const double param_tolerance = ddp::test::reduction_tolerance(dtype, ddp::test::parameter_terms_after(terms, it));
    CAPTURE(grad_tolerance, param_tolerance);
    opt.zero_grad();
    oracle_opt.zero_grad();
    for (int m = 0; m < cfg.micro_steps; ++m) {
      const int step = it * cfg.micro_steps + m;
      torch::manual_seed(500 + step);
      auto x = torch::randn({kShard * n, 6});
      auto y = torch::randint(3, {kShard * n});
      auto xs = x.narrow(0, r * kShard, kShard).clone().requires_grad_(true);
      Schedule mine = cfg.schedule(step, r);
      if (m + 1 < cfg.micro_steps) {
        auto guard = model->no_sync();
        auto [outs, skip] = model(xs, mine.with_branch);
        loss_of(outs, skip, mine, y.narrow(0, r * kShard, kShard)).backward();
      } else {
        auto [outs, skip] = model(xs, mine.with_branch);
        loss_of(outs, skip, mine, y.narrow(0, r * kShard, kShard)).backward();
      }
      // Oracle: every rank's shard with that rank's schedule, averaged over ranks.
      torch::Tensor total = torch::zeros({});
      for (int q = 0; q < n; ++q) {
        Schedule s = cfg.schedule(step, q);
        auto xq = x.narrow(0, q * kShard, kShard).clone().requires_grad_(true);
        auto [outs, skip] = oracle->forward(xq, s.with_branch);
        total = total + loss_of(outs, skip, s, y.narrow(0, q * kShard, kShard));
      }
      (total / n).backward();
    }
    auto got = ddp::test::gradients_of(*local);
    auto want = ddp::test::gradients_of(*oracle);
    for (size_t i = 0; i < got.size(); ++i) {
      CAPTURE(got[i].first);
      REQUIRE(got[i].second.defined() == want[i].second.defined());
      if (!want[i].second.defined()) continue;
      CHECK(max_relative_error(got[i].second, want[i].second) <= grad_tolerance);
      CHECK(identical_across_ranks(got[i].second));
    }
    CHECK(model->reducer().unused_parameters() == expected_unused(local, cfg, it, n));
    opt.step();
    oracle_opt.step();
    const auto params = local->named_parameters();
    const auto oracle_params = oracle->named_parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      CAPTURE(params[i].key());
      CHECK(identical_across_ranks(params[i].value()));
      CHECK(max_relative_error(params[i].value(), oracle_params[i].value()) <= param_tolerance);
    }
  }
}

ddp::Options options(bool find_unused, double cap_mb) {
  ddp::Options o = ddp::test::test_options();
  o.find_unused_parameters(find_unused);
  o.first_bucket_cap_mb(cap_mb);
  o.bucket_cap_mb(cap_mb);
  return o;
}

} // namespace

TEST_CASE("random per-rank, per-iteration head schedules match the oracle", "[unused]") {
  for (bool find_unused : {false, true}) {
    for (double cap : {1e-6, 1e-3, 25.0}) {
      CAPTURE(find_unused, cap);
      RunConfig cfg;
      cfg.options = options(find_unused, cap);
      run_against_oracle(cfg);
    }
  }
}

TEST_CASE("unused parameters with gradients reduced in place in .grad", "[unused]") {
  for (bool find_unused : {false, true}) {
    CAPTURE(find_unused);
    RunConfig cfg;
    cfg.options = options(find_unused, 1e-6);
    cfg.options.in_place_min_mb(1e-5); // every tensor alone and in place
    run_against_oracle(cfg);
    cfg.micro_steps = 2; // and with no_sync accumulation
    cfg.iterations = 3;
    run_against_oracle(cfg);
  }
}

TEST_CASE("a rank whose loss uses no parameter still reduces: the others get sum / world", "[unused]") {
  for (bool find_unused : {false, true}) {
    CAPTURE(find_unused);
    RunConfig cfg;
    cfg.options = options(find_unused, 1e-3);
    const int last = ddp::test::world().size() - 1;
    cfg.schedule = [last](int it, int q) {
      if (q == last) return Schedule{{}, false}; // only the parameter-free output
      return random_schedule(it, q);
    };
    run_against_oracle(cfg);
  }
}

TEST_CASE("heads returned but never in the loss, and a never-called layer, are reported by name", "[unused]") {
  RunConfig cfg;
  cfg.options = options(false, 25.0);
  cfg.schedule = [](int, int) { return Schedule{{0, 2}, true}; }; // head1 and head3 returned, unused
  cfg.iterations = 2;
  run_against_oracle(cfg);

  torch::manual_seed(1);
  DeepSup net;
  ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), options(true, 25.0));
  auto [outs, skip] = model(torch::randn({2, 6}), true);
  (outs[0].sum() + outs[2].sum()).backward();
  const std::vector<std::string> expected{"head1.weight", "head1.bias", "head3.weight",
                                          "head3.bias",   "branch.weight", "branch.bias",
                                          "debug.weight", "debug.bias"};
  CHECK(model->reducer().unused_parameters() == expected);
  CHECK(model->reducer().locally_unused_parameters() == expected);
  CHECK_FALSE(net->debug->weight.grad().defined()); // untouched
}

TEST_CASE("static_graph learns the used set once and rejects a changed graph by name", "[unused]") {
  RunConfig cfg;
  cfg.options = options(false, 1e-3);
  cfg.options.static_graph(true);
  cfg.schedule = [](int, int q) { return Schedule{q == 0 ? std::vector<int>{0, 1} : std::vector<int>{1, 2}, false}; };
  run_against_oracle(cfg);

  torch::manual_seed(1);
  DeepSup net;
  ddp::DistributedDataParallel model(net, ddp::test::world_ptr(), cfg.options);
  {
    auto [outs, skip] = model(torch::randn({2, 6}), false);
    outs[0].sum().backward();
  }
  const int64_t collectives_after_first = model->reducer().stats().collectives;
  const int64_t skipped_after_first = model->reducer().stats().buckets_skipped;
  {
    auto [outs, skip] = model(torch::randn({2, 6}), false);
    outs[0].sum().backward();
  }
  // Later iterations skip the graph walk, not the collectives: the section header, the
  // buckets (but those no rank used: skip_all_reduce_unused_params), and the
  // used-flags/status exchange that keeps an error on one rank an error on every rank.
  const int64_t skipped = model->reducer().stats().buckets_skipped - skipped_after_first;
  CHECK(model->reducer().stats().collectives - collectives_after_first + skipped ==
        model->reducer().stats().buckets + 2);
  auto [outs, skip] = model(torch::randn({2, 6}), false);
  CHECK_THROWS_WITH((outs[0].sum() + outs[1].sum()).backward(),
                    Contains("static_graph=true") && Contains("'head1.") && Contains("graph changed"));
}

TEST_CASE("buckets no rank used are skipped, without a collective more, and the result is the oracle's",
          "[unused][skip]") {
  // Heads 2 and 3 (and the branch, and `debug`) are off on every rank in odd iterations;
  // head 1 is used by rank 0 only; head 0 by all.
  const ScheduleFn multitask = [](int it, int q) {
    Schedule s{{0}, it % 2 == 0};
    if (q == 0) s.heads.push_back(1);
    if (it % 2 == 0) s.heads.insert(s.heads.end(), {2, 3});
    return s;
  };
  for (bool skip : {true, false}) {
    for (bool static_graph : {false, true}) {
      CAPTURE(skip, static_graph);
      RunConfig cfg;
      cfg.options = options(!static_graph, 1e-3).skip_all_reduce_unused_params(skip).static_graph(static_graph);
      // static_graph needs the same used set every iteration: odd iterations only.
      cfg.schedule = static_graph ? ScheduleFn([&](int it, int q) { return multitask(2 * it + 1, q); }) : multitask;
      run_against_oracle(cfg);
    }
  }
  // The same steps with and without the skip: the same bits, and exactly the skipped
  // buckets' all-reduces fewer.
  auto pg = ddp::test::world_ptr();
  std::vector<std::vector<torch::Tensor>> grads(2);
  std::vector<int64_t> collectives(2), skipped(2);
  for (int variant = 0; variant < 2; ++variant) {
    torch::manual_seed(3);
    DeepSup net;
    ddp::DistributedDataParallel model(net, pg, options(true, 1e-6).skip_all_reduce_unused_params(variant == 0));
    const int64_t start = model->reducer().stats().collectives;
    for (int it = 0; it < 4; ++it) {
      torch::manual_seed(100 + it + 10 * pg->rank());
      Schedule s = multitask(it, pg->rank());
      auto [outs, out_skip] = model(torch::randn({kShard, 6}), s.with_branch);
      loss_of(outs, out_skip, s, torch::randint(3, {kShard})).backward();
    }
    collectives[variant] = model->reducer().stats().collectives - start;
    skipped[variant] = model->reducer().stats().buckets_skipped;
    for (const auto& [name, g] : ddp::test::gradients_of(*net)) grads[variant].push_back(g);
  }
  CHECK(skipped[0] > 0);
  CHECK(skipped[1] == 0);
  CHECK(collectives[0] + skipped[0] == collectives[1]);
  REQUIRE(grads[0].size() == grads[1].size());
  for (size_t i = 0; i < grads[0].size(); ++i) {
    CAPTURE(i);
    REQUIRE(grads[0][i].defined() == grads[1][i].defined());
    if (grads[0][i].defined()) CHECK(torch::equal(grads[0][i], grads[1][i]));
  }
}

TEST_CASE("no_sync micro-steps with different unused sets: a parameter used in any step counts", "[unused][nosync]") {
  for (bool find_unused : {false, true}) {
    CAPTURE(find_unused);
    RunConfig cfg;
    cfg.options = options(find_unused, 1e-3);
    cfg.micro_steps = 3;
    cfg.iterations = 3;
    run_against_oracle(cfg);
  }
}
