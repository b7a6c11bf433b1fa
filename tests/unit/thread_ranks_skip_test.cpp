// Options::skip_all_reduce_unused_params with the ranks as threads (world 2-4): a bucket
// none of whose parameters gets a gradient on any rank is not all-reduced, every other one
// is, whatever each rank's own unused set; the skipped parameters keep their .grad (an
// undefined one stays undefined, an old value stays); and the skip adds no collective.
// The allreduces are counted by a group wrapped around each rank's (not the reducer's
// stats), and the averages are computed here from the inputs. ThreadProcessGroup pairs
// the ranks' calls in order and fails a slot whose calls differ, so a bucket skipped on
// one rank and not another is an error, not a silent pass.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <fmt/format.h>

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include <ddp/ddp.h>
#include <ddp/join.h>

#include "thread_ranks.h"
#include "world.h"

using ddp::test::run_ranks;
using PG = std::shared_ptr<ddp::ProcessGroup>;

namespace {

constexpr int kHeads = 4;
constexpr int64_t kSize = 512; // 2 KiB a head: each is its own bucket under the caps below
constexpr double kCapMb = 0.001;
constexpr double kOld = 7.0;   // the .grad a skipped head holds before the step

// A head per task; `active` says which heads this rank's forward uses.
struct HeadsImpl : torch::nn::Module {
  HeadsImpl() {
    for (int h = 0; h < kHeads; ++h) {
      auto layer = register_module(fmt::format("head{}", h), std::make_shared<torch::nn::Module>());
      w.push_back(layer->register_parameter("weight", torch::ones({kSize})));
    }
  }
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor loss = (x[0] * 0).sum(); // a loss even when no head is active
    for (int h = 0; h < kHeads; ++h) {
      if (active[static_cast<size_t>(h)]) loss = loss + (w[static_cast<size_t>(h)] * x[h]).sum();
    }
    return loss;
  }
  std::vector<torch::Tensor> w;
  std::vector<char> active = std::vector<char>(kHeads, 1);
};
TORCH_MODULE(Heads);

// Rank q's input at step s, micro-step m: the gradient of head h is row h.
torch::Tensor input_of(int q, int s, int m = 0) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(10000 * s + 100 * q + m + 1));
  return torch::randn({kHeads, kSize}, gen);
}

// Counts the allreduces (the buckets' collectives) and every collective of one rank.
class CountingGroup : public ddp::ProcessGroup {
 public:
  explicit CountingGroup(PG inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  std::shared_ptr<ddp::Work> allreduce(at::Tensor tensor) override {
    allreduces += 1;
    collectives += 1;
    return inner_->allreduce(std::move(tensor));
  }
  std::shared_ptr<ddp::Work> broadcast(at::Tensor tensor, int root) override {
    collectives += 1;
    return inner_->broadcast(std::move(tensor), root);
  }
  std::shared_ptr<ddp::Work> allgather(std::vector<at::Tensor> outputs, at::Tensor input) override {
    collectives += 1;
    return inner_->allgather(std::move(outputs), std::move(input));
  }
  void barrier() override { inner_->barrier(); }
  void abort(const std::string& reason) override { inner_->abort(reason); }

  std::atomic<int64_t> allreduces{0};
  std::atomic<int64_t> collectives{0};

 private:
  PG inner_;
};

// used(q, s, h): whether rank q's forward at step s uses head h.
using Schedule = std::function<bool(int q, int s, int h)>;

// What one rank saw over the steps.
struct Seen {
  std::vector<int64_t> allreduces;     // per step
  int64_t collectives = 0;             // all steps, every kind
  int64_t stats_skipped = 0;           // ReducerStats::buckets_skipped
  int64_t stats_collectives = 0;       // ReducerStats::collectives
  double worst = 0;                    // max |grad - expected| over the used heads
  int compared = 0;                    // used heads compared
  int untouched_wrong = 0;             // skipped heads whose .grad changed
  int untouched_checked = 0;
  std::vector<int64_t> bucket_sizes;   // members per bucket at the end
};

// Trains `steps` steps of `schedule` on `world` ranks; with `no_sync_head` >= 0, each step
// first runs a no_sync() micro-step in which every rank uses head 0 and rank 1 also uses
// head `no_sync_head`.
std::vector<ddp::test::RankResult<Seen>> train(int world, const ddp::Options& options, const Schedule& schedule,
                                               int steps, int no_sync_head = -1) {
  return run_ranks(world, [&](int r, PG pg) {
    auto counting = std::make_shared<CountingGroup>(pg);
    Heads model;
    ddp::DistributedDataParallel wrapped(model, counting, options);
    Seen seen;
    const int64_t collectives_at_start = counting->collectives;
    for (int s = 0; s < steps; ++s) {
      // Heads no rank uses this step keep an old .grad (odd steps) or none (even steps);
      // the others start from none.
      std::vector<bool> anyone(kHeads, false);
      for (int h = 0; h < kHeads; ++h) {
        for (int q = 0; q < world; ++q) anyone[h] = anyone[h] || schedule(q, s, h) || (h == no_sync_head && q == 1);
        model->w[h].mutable_grad() = (!anyone[h] && s % 2 == 1) ? torch::full({kSize}, kOld) : at::Tensor();
      }
      torch::Tensor expected_sum = torch::zeros({kHeads, kSize});
      if (no_sync_head >= 0) {
        auto guard = wrapped->no_sync();
        for (int h = 0; h < kHeads; ++h) model->active[h] = h == 0 || (h == no_sync_head && r == 1);
        wrapped(input_of(r, s, 1)).backward();
        for (int q = 0; q < world; ++q) {
          torch::Tensor x = input_of(q, s, 1);
          expected_sum[0] += x[0];
          if (q == 1) expected_sum[no_sync_head] += x[no_sync_head];
        }
      }
      for (int h = 0; h < kHeads; ++h) model->active[h] = schedule(r, s, h);
      const int64_t before = counting->allreduces;
      wrapped(input_of(r, s)).backward();
      seen.allreduces.push_back(counting->allreduces - before);
      for (int q = 0; q < world; ++q) {
        torch::Tensor x = input_of(q, s);
        for (int h = 0; h < kHeads; ++h) {
          if (schedule(q, s, h)) expected_sum[h] += x[h];
        }
      }
      for (int h = 0; h < kHeads; ++h) {
        const torch::Tensor& grad = model->w[h].grad();
        if (anyone[h]) {
          seen.compared += 1;
          if (!grad.defined()) {
            seen.worst = 1e30;
            continue;
          }
          seen.worst = std::max(seen.worst, (grad - expected_sum[h] / world).abs().max().item<double>());
        } else {
          seen.untouched_checked += 1;
          const bool ok = s % 2 == 1 ? grad.defined() && grad.eq(kOld).all().item<bool>() : !grad.defined();
          if (!ok) seen.untouched_wrong += 1;
        }
      }
    }
    seen.collectives = counting->collectives - collectives_at_start;
    seen.stats_skipped = wrapped->reducer().stats().buckets_skipped;
    seen.stats_collectives = wrapped->reducer().stats().collectives;
    for (const auto& b : wrapped->reducer().bucket_layout()) seen.bucket_sizes.push_back(static_cast<int64_t>(b.size()));
    return seen;
  });
}

// Heads no rank uses at step s.
int unused_everywhere(int world, const Schedule& schedule, int s) {
  int count = 0;
  for (int h = 0; h < kHeads; ++h) {
    bool any = false;
    for (int q = 0; q < world; ++q) any = any || schedule(q, s, h);
    count += any ? 0 : 1;
  }
  return count;
}

ddp::Options base_options() {
  return ddp::test::test_options().find_unused_parameters(true).bucket_cap_mb(kCapMb).first_bucket_cap_mb(kCapMb);
}

void require_ok(const std::vector<ddp::test::RankResult<Seen>>& results) {
  for (const auto& r : results) {
    INFO("rank " << r.rank << " threw " << r.error_type << ": " << r.error);
    REQUIRE(r.ok());
    REQUIRE(r.value->bucket_sizes == std::vector<int64_t>(kHeads, 1)); // one head a bucket
  }
}

// Different sets on every rank: head 0 used by all, head 1 by one rank that moves, head 2
// by none, head 3 by none on even steps and by every rank but 0 on odd ones.
bool mixed(int q, int s, int h) {
  switch (h) {
    case 0: return true;
    case 1: return q == s % 2;
    case 2: return false;
    default: return s % 2 == 1 && q != 0;
  }
}

} // namespace

TEST_CASE("skip unused buckets on threads: only buckets no rank used are skipped, averages right, .grad untouched",
          "[threads][unused][skip]") {
  constexpr int kSteps = 4;
  for (int world : {2, 3, 4}) {
    for (auto check : {ddp::Options::StepCheck::kStrict, ddp::Options::StepCheck::kDeferred}) {
      CAPTURE(world, check == ddp::Options::StepCheck::kStrict ? "strict" : "deferred");
      auto on = train(world, base_options().step_check(check), mixed, kSteps);
      auto off = train(world, base_options().step_check(check).skip_all_reduce_unused_params(false), mixed, kSteps);
      require_ok(on);
      require_ok(off);
      int64_t skipped = 0;
      for (int s = 0; s < kSteps; ++s) skipped += unused_everywhere(world, mixed, s);
      REQUIRE(skipped >= kSteps); // head 2 every step, head 3 on even steps
      for (size_t q = 0; q < on.size(); ++q) {
        const Seen& a = *on[q].value;
        const Seen& b = *off[q].value;
        CAPTURE(q);
        for (int s = 0; s < kSteps; ++s) {
          CAPTURE(s);
          CHECK(a.allreduces[s] == kHeads - unused_everywhere(world, mixed, s));
          CHECK(b.allreduces[s] == kHeads);
        }
        // No collective added: every one the skip leaves out is one fewer, nothing else.
        CHECK(a.collectives + skipped == b.collectives);
        CHECK(a.stats_skipped == skipped);
        CHECK(b.stats_skipped == 0);
        CHECK(a.stats_collectives + skipped == b.stats_collectives);
        for (const Seen* seen : {&a, &b}) {
          CHECK(seen->compared == kSteps * kHeads - skipped);
          CHECK(seen->worst < 1e-5);
          CHECK(seen->untouched_checked == skipped);
          CHECK(seen->untouched_wrong == 0);
        }
      }
    }
  }
}

TEST_CASE("skip unused buckets on threads: a no_sync() accumulation keeps its bucket; static_graph skips too",
          "[threads][unused][skip][nosync]") {
  constexpr int kSteps = 4;
  // The synchronised step: head 0 by all, head 3 by rank 0, heads 1 and 2 by none; in the
  // no_sync() micro-step rank 1 used head 2, so only head 1's bucket is skipped.
  const Schedule sync_step = [](int q, int, int h) { return h == 0 || (h == 3 && q == 0); };
  for (int world : {2, 3}) {
    for (auto check : {ddp::Options::StepCheck::kStrict, ddp::Options::StepCheck::kDeferred}) {
      CAPTURE(world, check == ddp::Options::StepCheck::kStrict ? "strict" : "deferred");
      auto results = train(world, base_options().step_check(check), sync_step, kSteps, /*no_sync_head=*/2);
      require_ok(results);
      for (const auto& r : results) {
        const Seen& seen = *r.value;
        CAPTURE(r.rank);
        for (int s = 0; s < kSteps; ++s) CHECK(seen.allreduces[s] == kHeads - 1);
        CHECK(seen.stats_skipped == kSteps);
        CHECK(seen.compared == kSteps * (kHeads - 1));
        CHECK(seen.worst < 1e-5);
        CHECK(seen.untouched_checked == kSteps);
        CHECK(seen.untouched_wrong == 0);
      }
    }
  }
  // static_graph: the first iteration learns the used set (nothing skipped then), later
  // ones mark the rest unused up front and skip what no rank used.
  for (int world : {2, 3}) {
    CAPTURE(world);
    const Schedule fixed = [world](int q, int, int h) { return h == 0 || (h == 1 && q == world - 1); };
    auto results = train(world, base_options().find_unused_parameters(false).static_graph(true), fixed, kSteps);
    require_ok(results);
    for (const auto& r : results) {
      const Seen& seen = *r.value;
      CAPTURE(r.rank);
      CHECK(seen.allreduces[0] == kHeads);
      for (int s = 1; s < kSteps; ++s) CHECK(seen.allreduces[s] == kHeads - 2);
      CHECK(seen.stats_skipped == 2 * (kSteps - 1));
      CHECK(seen.worst < 1e-5);
      CHECK(seen.untouched_wrong == 0);
      CHECK(seen.untouched_checked == 2 * kSteps);
    }
  }
}

TEST_CASE("skip unused buckets on threads: a Join shadow counts as using nothing", "[threads][unused][skip][join]") {
  constexpr int kSteps = 3;
  const int world = 3;
  const int joined = 2; // runs out of data one step early
  // Active ranks: head 0 by all, head 1 by rank 0, heads 2 and 3 by none. Shadowed by
  // rank 2 in the last step: still heads 2 and 3 skipped (not head 1: rank 0 used it).
  auto results = run_ranks(world, [&](int r, PG pg) {
    auto counting = std::make_shared<CountingGroup>(pg);
    Heads model;
    ddp::DistributedDataParallel wrapped(model, counting, base_options());
    std::vector<int64_t> allreduces;
    double worst = 0;
    {
      ddp::Join join(wrapped, ddp::JoinOptions().divide_by_initial_world_size(true));
      const int steps = r == joined ? kSteps - 1 : kSteps;
      for (int s = 0; s < steps; ++s) {
        for (int h = 0; h < kHeads; ++h) {
          model->w[h].mutable_grad() = h >= 2 ? torch::full({kSize}, kOld) : at::Tensor();
          model->active[h] = h == 0 || (h == 1 && r == 0);
        }
        const int64_t before = counting->allreduces;
        wrapped(input_of(r, s)).backward();
        allreduces.push_back(counting->allreduces - before);
        torch::Tensor expected = torch::zeros({kHeads, kSize});
        for (int q = 0; q < world; ++q) {
          if (s == kSteps - 1 && q == joined) continue; // shadowed: contributes nothing
          torch::Tensor x = input_of(q, s);
          expected[0] += x[0];
          if (q == 0) expected[1] += x[1];
        }
        for (int h = 0; h < 2; ++h) worst = std::max(worst, (model->w[h].grad() - expected[h] / world).abs().max().item<double>());
        for (int h = 2; h < kHeads; ++h) {
          if (!model->w[h].grad().eq(kOld).all().item<bool>()) worst = 1e30;
        }
      }
      const int64_t before = counting->allreduces;
      join.join();
      if (r == joined) allreduces.push_back(counting->allreduces - before);
    }
    return std::make_tuple(allreduces, worst, wrapped->reducer().stats().buckets_skipped);
  });
  for (const auto& r : results) {
    INFO("rank " << r.rank << " threw " << r.error_type << ": " << r.error);
    REQUIRE(r.ok());
    const auto& [allreduces, worst, skipped] = *r.value;
    CHECK(allreduces == std::vector<int64_t>(kSteps, kHeads - 2));
    CHECK(worst < 1e-5);
    CHECK(skipped == 2 * kSteps);
  }
}
