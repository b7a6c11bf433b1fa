// Options::bucket_cap_mb_list and Options::first_iteration_one_bucket with the ranks as
// threads at world 2 and 3: the buckets are what the options say (bucket_layout() at
// construction, after the first iteration and after the rebuild) and the gradients are
// still each rank's planted gradient averaged over the ranks (tests/support/planted.h:
// grad p_i = c_i exactly, so the expected average is computed here from the planted
// values, not by the reducer). The mpirun counterpart is tests/mpi/gradient_test.cpp.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include <ddp/ddp.h>

#include "planted.h"
#include "rank_results.h"
#include "thread_ranks.h"
#include "world.h"

using ddp::test::require_values;
using ddp::test::run_ranks;
using PG = std::shared_ptr<ddp::ProcessGroup>;
using Layout = std::vector<std::vector<std::string>>;

namespace {

// Planted parameters' bytes (planted_sizes() x 4), backward (reverse registration) order:
//   layer6.weight 20, layer5.weight 1200004, layer4.bias 3996, layer3.weight 4,
//   layer2.weight 160000, layer1.bias 68, layer0.weight 12004.
// The backward readies them in that order too (the loss adds them up in registration
// order, so the last added is reached first), so the rebuild keeps it.
const std::vector<std::string> kReverse{"layer6.weight", "layer5.weight", "layer4.bias",  "layer3.weight",
                                        "layer2.weight", "layer1.bias",   "layer0.weight"};

// Caps of 20 KiB, 1 KiB, then 1.5 MiB repeating: bucket 0 closes with layer5 (20 + 1200004
// bytes), bucket 1 with layer4.bias alone (3996 >= 1048), bucket 2 never fills.
const std::vector<double> kCapList{0.02, 0.001, 1.5};
const Layout kListLayout{{"layer6.weight", "layer5.weight"},
                         {"layer4.bias"},
                         {"layer3.weight", "layer2.weight", "layer1.bias", "layer0.weight"}};

// The default caps with the default in-place threshold (1 MiB on CPU): layer5.weight
// (1200004 bytes) is reduced alone, in place, the others share the first bucket.
const Layout kDefaultLayout{{"layer5.weight"},
                            {"layer6.weight", "layer4.bias", "layer3.weight", "layer2.weight", "layer1.bias",
                             "layer0.weight"}};

struct Seen {
  Layout at_construction;
  Layout after_iteration0; // the rebuild happens at the next forward
  Layout after_rebuild;
  int64_t rebuilds = 0;
  int64_t buckets = 0; // stats().buckets at the end
  // Per step and parameter: max |grad - expected| over the bound of a float sum's error.
  double worst_error_ratio = 0;
  bool identical = true; // every rank's .grad bit-identical, every step
};

// Per element: |got - want| <= n * 2^-22 * (sum_r |x_r|) / n bounds the error of any
// order of float adds of n terms and the division (round-off u = 2^-24 per operation).
double error_ratio(const torch::Tensor& got, const std::vector<torch::Tensor>& per_rank) {
  const int64_t n = static_cast<int64_t>(per_rank.size());
  torch::Tensor sum = torch::zeros_like(per_rank.front(), torch::kDouble);
  torch::Tensor abs_sum = torch::zeros_like(sum);
  for (const auto& x : per_rank) {
    sum += x.to(torch::kDouble);
    abs_sum += x.to(torch::kDouble).abs();
  }
  const torch::Tensor want = sum / static_cast<double>(n);
  const torch::Tensor bound = abs_sum / static_cast<double>(n) * (static_cast<double>(n) * std::ldexp(1.0, -22)) + 1e-300;
  return ((got.to(torch::kDouble) - want).abs() / bound).max().item<double>();
}

Seen train(PG pg, const ddp::Options& options, int iterations = 3) {
  const int n = pg->size();
  const int q = pg->rank();
  Seen seen;
  ddp::test::Planted model;
  ddp::DistributedDataParallel wrapped(model, pg, options);
  seen.at_construction = wrapped->reducer().bucket_layout();
  for (int it = 0; it < iterations; ++it) {
    model->zero_grad();
    wrapped(ddp::test::planted_grads(q, it)).backward();
    if (it == 0) seen.after_iteration0 = wrapped->reducer().bucket_layout();
    if (it == 1) seen.after_rebuild = wrapped->reducer().bucket_layout();
    for (size_t i = 0; i < model->params.size(); ++i) {
      std::vector<torch::Tensor> per_rank;
      for (int r = 0; r < n; ++r) per_rank.push_back(ddp::test::planted_grad(r, it, i));
      const torch::Tensor grad = model->params[i].grad();
      seen.worst_error_ratio = std::max(seen.worst_error_ratio, error_ratio(grad, per_rank));
      seen.identical = seen.identical && ddp::test::identical_across_ranks(grad);
    }
  }
  seen.rebuilds = wrapped->reducer().stats().bucket_rebuilds;
  seen.buckets = wrapped->reducer().stats().buckets;
  return seen;
}

} // namespace

TEST_CASE("thread ranks: bucket_cap_mb_list gives bucket k the k-th cap, before and after the rebuild",
          "[threads][buckets]") {
  for (int n : {2, 3}) {
    CAPTURE(n);
    // in_place_min_mb(0): layer5.weight shares bucket 0, so the list alone decides.
    const ddp::Options o = ddp::test::test_options().bucket_cap_mb_list(kCapList).in_place_min_mb(0);
    auto results = run_ranks(n, [&](int, PG pg) { return train(pg, o); });
    require_values(results);
    for (const auto& r : results) {
      CAPTURE(r.rank);
      const Seen& s = *r.value;
      CHECK(s.at_construction == kListLayout);
      CHECK(s.after_iteration0 == kListLayout);
      CHECK(s.after_rebuild == kListLayout);
      CHECK(s.rebuilds == 1);
      CHECK(s.worst_error_ratio <= 1.0);
      CHECK(s.identical);
    }
  }
}

TEST_CASE("thread ranks: first_iteration_one_bucket reduces the first iteration in one bucket, then the caps apply",
          "[threads][buckets]") {
  for (int n : {2, 3}) {
    // Without a list: the default caps and in-place threshold after the rebuild; with one:
    // the list's layout.
    for (bool with_list : {false, true}) {
      CAPTURE(n, with_list);
      ddp::Options o = ddp::test::test_options().first_iteration_one_bucket(true);
      if (with_list) o.bucket_cap_mb_list(kCapList).in_place_min_mb(0);
      auto results = run_ranks(n, [&](int, PG pg) { return train(pg, o); });
      require_values(results);
      for (const auto& r : results) {
        CAPTURE(r.rank);
        const Seen& s = *r.value;
        CHECK(s.at_construction == Layout{kReverse}); // layer5.weight too: no in-place bucket yet
        CHECK(s.after_iteration0 == Layout{kReverse});
        CHECK(s.after_rebuild == (with_list ? kListLayout : kDefaultLayout));
        CHECK(s.rebuilds == 1);
        CHECK(s.buckets == static_cast<int64_t>(s.after_rebuild.size()));
        CHECK(s.worst_error_ratio <= 1.0);
        CHECK(s.identical);
      }
    }
  }
}
