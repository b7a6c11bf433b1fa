// Reproducible-reduction fixtures (Options::reproducible, wire_dtype): a module whose
// gradients are exactly the values each rank plants, values of wide dynamic range (so
// that the order of the adds shows in the bits), and the offline reference the reducer's
// result must equal bit for bit: each element's rank-order sum computed here with scalar
// float arithmetic, independently of the code under test.
#pragma once

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include <ddp/ddp.h>
#include <ddp/join.h>

#include "world.h"

namespace ddp::test {

// Parameter sizes: odd lengths (chunks of an n-rank exchange are padded), a one-element
// one, and one above the 1 MiB in-place threshold (reduced in its own .grad by default).
inline const std::vector<int64_t>& planted_sizes() {
  static const std::vector<int64_t> sizes{3001, 17, 40000, 1, 999, 300001, 5};
  return sizes;
}

// Parameters "layer<i>.weight", with every third one "layer<i>.bias" (for the
// per-parameter wire dtype patterns). loss(c) = sum_i sum(p_i * c_i): grad p_i = c_i exactly.
struct PlantedImpl : torch::nn::Module {
  PlantedImpl() {
    const auto& sizes = planted_sizes();
    for (size_t i = 0; i < sizes.size(); ++i) {
      auto layer = register_module(fmt::format("layer{}", i), std::make_shared<torch::nn::Module>());
      params.push_back(layer->register_parameter(i % 3 == 1 ? "bias" : "weight", torch::zeros({sizes[i]})));
    }
  }
  static std::string name_of(size_t i) { return fmt::format("layer{}.{}", i, i % 3 == 1 ? "bias" : "weight"); }
  torch::Tensor forward(const std::vector<torch::Tensor>& planted) {
    torch::Tensor loss = torch::zeros({});
    for (size_t i = 0; i < params.size(); ++i) loss = loss + (params[i] * planted[i]).sum();
    return loss;
  }
  std::vector<torch::Tensor> params;
};
TORCH_MODULE(Planted);

// Rank q's gradient for parameter i in iteration `it`: signed values from 2^-30 to 2^30
// times a normal sample, from a generator of its own (the same on every rank and thread).
inline torch::Tensor planted_grad(int q, int it, size_t i) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(100000 * it + 1000 * q + static_cast<int64_t>(i) + 7));
  const int64_t n = planted_sizes()[i];
  torch::Tensor scale = torch::exp2(torch::randint(-30, 31, {n}, gen, torch::kFloat));
  return torch::randn({n}, gen) * scale;
}

inline std::vector<torch::Tensor> planted_grads(int q, int it) {
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < planted_sizes().size(); ++i) out.push_back(planted_grad(q, it, i));
  return out;
}

// The exact average of parameter i's planted gradients over `n` ranks in iteration `it`,
// and the size of what it averages, A = sum_r |x_r| / n (error bounds scale with it).
struct ExactMean {
  torch::Tensor mean;
  torch::Tensor size;
};
inline ExactMean exact_mean(int n, int it, size_t i) {
  torch::Tensor sum = torch::zeros({planted_sizes()[i]}, torch::kDouble);
  torch::Tensor magnitude = torch::zeros_like(sum);
  for (int r = 0; r < n; ++r) {
    const torch::Tensor x = planted_grad(r, it, i).to(torch::kDouble);
    sum += x;
    magnitude += x.abs();
  }
  return {sum / n, magnitude / n};
}

// float rounded to `wire` and back (round to nearest even, as ATen's casts).
inline float through(float v, c10::ScalarType wire) {
  if (wire == at::kBFloat16) return static_cast<float>(c10::BFloat16(v));
  if (wire == at::kHalf) return static_cast<float>(c10::Half(v));
  return v;
}

// The reference: for every element, wire(((w(x_0) + w(x_1)) + ... + w(x_{n-1})) / divisor)
// in float, x_r rank r's value and w() the round trip through the wire dtype; `used[r]`
// false leaves rank r out (a joined rank contributes nothing).
inline torch::Tensor rank_order_average(const std::vector<torch::Tensor>& per_rank, c10::ScalarType wire,
                                        int64_t divisor, const std::vector<bool>& used = {}) {
  const int64_t n = per_rank.front().numel();
  torch::Tensor out = torch::empty({n});
  float* o = out.data_ptr<float>();
  std::vector<const float*> in;
  for (const auto& t : per_rank) in.push_back(t.data_ptr<float>());
  for (int64_t e = 0; e < n; ++e) {
    bool first = true;
    float sum = 0.0f;
    for (size_t r = 0; r < in.size(); ++r) {
      if (!used.empty() && !used[r]) continue;
      const float x = through(in[r][e], wire);
      sum = first ? x : sum + x;
      first = false;
    }
    o[e] = through(sum / static_cast<float>(divisor), wire);
  }
  return out;
}

// The wire dtype Options give parameter `name` (first matching override, else wire_dtype,
// else float32): the reference's side of ReductionPrecision, for the patterns used here
// ("*.bias" only).
inline c10::ScalarType planted_wire(const ddp::Options& o, const std::string& name) {
  for (const auto& w : o.wire_dtype_overrides()) {
    const std::string& p = w.pattern;
    if (p == "*.bias" && name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0) return w.dtype;
  }
  return o.wire_dtype().value_or(at::kFloat);
}

// Bucket layouts that must not change a reproducible result: (what it is, the options).
inline std::vector<std::pair<std::string, ddp::Options>> planted_layouts(const ddp::Options& base) {
  auto with = [&](auto change) {
    ddp::Options o = base;
    change(o);
    return o;
  };
  return {
      {"defaults", base},
      {"small buckets", with([](ddp::Options& o) { o.bucket_cap_mb(0.01).first_bucket_cap_mb(0.001); })},
      {"one bucket", with([](ddp::Options& o) { o.bucket_cap_mb(1000).first_bucket_cap_mb(1000).in_place_min_mb(0); })},
      {"more in place", with([](ddp::Options& o) { o.in_place_min_mb(0.01); })},
      {"bucket_cap_mb_list", with([](ddp::Options& o) { o.bucket_cap_mb_list({0.001, 0.2, 0.01}); })},
      {"first_iteration_one_bucket", with([](ddp::Options& o) { o.first_iteration_one_bucket(true); })},
      {"gradient_as_bucket_view", with([](ddp::Options& o) { o.gradient_as_bucket_view(true); })},
      {"static_graph", with([](ddp::Options& o) { o.static_graph(true); })},
      {"find_unused_parameters", with([](ddp::Options& o) { o.find_unused_parameters(true); })},
  };
}

// Elements whose bits differ (not "==": -0 and +0, NaN payloads count too).
inline int64_t differing_bits(const torch::Tensor& a, const torch::Tensor& b) {
  return a.contiguous().view(torch::kInt32).ne(b.contiguous().view(torch::kInt32)).sum().item<int64_t>();
}

// One layout's run of planted steps on this rank.
struct PlantedOutcome {
  std::string layout;
  int64_t differing = 0; // elements unequal to the rank-order reference, over every step
  int64_t elements = 0;
  std::vector<torch::Tensor> last; // the last step's gradients
};

// Trains `iterations` planted steps (the first one rebuilds the buckets) for every layout
// of planted_layouts(base) on `pg`, counting where the gradients differ from the
// reference. Collective: every rank of `pg` must call it.
inline std::vector<PlantedOutcome> run_planted(const std::shared_ptr<ProcessGroup>& pg, const ddp::Options& base,
                                               int iterations = 3) {
  const int n = pg->size();
  const int q = pg->rank();
  std::vector<PlantedOutcome> outcomes;
  for (const auto& [label, options] : planted_layouts(base)) {
    PlantedOutcome outcome;
    outcome.layout = label;
    Planted model;
    ddp::DistributedDataParallel wrapped(model, pg, options);
    for (int it = 0; it < iterations; ++it) {
      model->zero_grad();
      wrapped(planted_grads(q, it)).backward();
      outcome.last.clear();
      for (size_t i = 0; i < model->params.size(); ++i) {
        std::vector<torch::Tensor> per_rank;
        for (int r = 0; r < n; ++r) per_rank.push_back(planted_grad(r, it, i));
        const torch::Tensor expected =
            rank_order_average(per_rank, planted_wire(options, PlantedImpl::name_of(i)), n);
        const torch::Tensor grad = model->params[i].grad();
        outcome.differing += differing_bits(grad, expected);
        outcome.elements += grad.numel();
        outcome.last.push_back(grad.clone());
      }
    }
    outcomes.push_back(std::move(outcome));
  }
  return outcomes;
}

// `steps` planted steps under ddp::Join in which rank `joined` runs out of data before the
// last one: the others' last step is shadowed by it (it contributes zeros). Counts, on this
// rank, the elements that differ from the rank-order sum of the ranks still active, and the
// gradients compared. Collective: every rank of `pg` must call it.
inline std::pair<int64_t, int64_t> run_planted_join(const std::shared_ptr<ProcessGroup>& pg, int joined,
                                                    bool divide_by_world, int steps = 3) {
  const int n = pg->size();
  const int r = pg->rank();
  int64_t differing = 0;
  int64_t compared = 0;
  Planted model;
  ddp::DistributedDataParallel wrapped(
      model, pg, ddp::test::test_options().reproducible(true).bucket_cap_mb(0.05).first_bucket_cap_mb(0.01));
  ddp::JoinOptions options;
  options.divide_by_initial_world_size(divide_by_world);
  {
    ddp::Join join(wrapped, options);
    const int mine = r == joined ? steps - 1 : steps;
    for (int it = 0; it < mine; ++it) {
      model->zero_grad();
      wrapped(planted_grads(r, it)).backward();
      std::vector<bool> used(static_cast<size_t>(n), true);
      if (it >= steps - 1) used[static_cast<size_t>(joined)] = false;
      const int64_t active = std::count(used.begin(), used.end(), true);
      for (size_t i = 0; i < model->params.size(); ++i) {
        std::vector<torch::Tensor> per_rank;
        for (int q = 0; q < n; ++q) per_rank.push_back(planted_grad(q, it, i));
        const torch::Tensor expected = rank_order_average(per_rank, at::kFloat, divide_by_world ? n : active, used);
        differing += differing_bits(model->params[i].grad(), expected);
        compared += 1;
      }
    }
    join.join();
  }
  return {differing, compared};
}

// Elements whose bits differ between two layouts' last steps.
inline int64_t differing_between(const PlantedOutcome& a, const PlantedOutcome& b) {
  int64_t count = 0;
  for (size_t i = 0; i < a.last.size(); ++i) count += differing_bits(a.last[i], b.last[i]);
  return count;
}

} // namespace ddp::test
