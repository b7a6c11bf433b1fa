// Two wrapped copies of one model trained side by side on the same rank and data: one
// with a torch::optim optimizer stepped after backward() (the reference), one with the
// same optimizer overlapped with the backward (ddp::OverlappedOptimizer). The overlapped
// optimizer's promise is that their parameters stay bit for bit equal on CPU, so the
// comparison is torch::equal, not a tolerance. Used by the thread-rank tests
// (tests/unit/thread_ranks_overlap_test.cpp) and under mpirun (tests/mpi).
#pragma once

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <ddp/ddp.h>
#include <ddp/hooks.h>

namespace ddp::test {

// A trunk and two heads: `side` is used only when the forward is asked to (a branch that
// is off on some ranks or on all).
struct OverlapNetImpl : torch::nn::Module {
  OverlapNetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(16, 64))),
        fc2(register_module("fc2", torch::nn::Linear(64, 64))),
        fc3(register_module("fc3", torch::nn::Linear(64, 4))),
        side(register_module("side", torch::nn::Linear(64, 4))) {}
  at::Tensor forward(const at::Tensor& x, bool use_side) {
    auto h = torch::relu(fc2(torch::relu(fc1(x))));
    auto out = fc3(h);
    return use_side ? out + side(h) : out;
  }
  torch::nn::Linear fc1, fc2, fc3, side;
};
TORCH_MODULE(OverlapNet);

enum class OptimizerKind { kSgdMomentum, kSgdNesterov, kAdam, kAdamW, kRmsprop, kAdagrad };

inline const char* kind_name(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kSgdMomentum: return "SGD(momentum, weight decay)";
    case OptimizerKind::kSgdNesterov: return "SGD(Nesterov)";
    case OptimizerKind::kAdam: return "Adam";
    case OptimizerKind::kAdamW: return "AdamW";
    case OptimizerKind::kRmsprop: return "RMSprop";
    case OptimizerKind::kAdagrad: return "Adagrad";
  }
  return "?";
}

// Two parameter groups (the biases without weight decay), as trainers often have.
inline std::shared_ptr<torch::optim::Optimizer> make_optimizer(OptimizerKind kind, torch::nn::Module& module) {
  std::vector<at::Tensor> weights, biases;
  for (const auto& p : module.named_parameters()) {
    (p.key().find("bias") != std::string::npos ? biases : weights).push_back(p.value());
  }
  using namespace torch::optim;
  switch (kind) {
    case OptimizerKind::kSgdMomentum: {
      std::vector<OptimizerParamGroup> groups{
          OptimizerParamGroup(weights, std::make_unique<SGDOptions>(SGDOptions(0.05).momentum(0.9).weight_decay(1e-3))),
          OptimizerParamGroup(biases, std::make_unique<SGDOptions>(SGDOptions(0.05).momentum(0.9)))};
      return std::make_shared<SGD>(groups, SGDOptions(0.05));
    }
    case OptimizerKind::kSgdNesterov:
      return std::make_shared<SGD>(module.parameters(), SGDOptions(0.05).momentum(0.9).nesterov(true));
    case OptimizerKind::kAdam: {
      std::vector<OptimizerParamGroup> groups{
          OptimizerParamGroup(weights, std::make_unique<AdamOptions>(AdamOptions(1e-2).weight_decay(1e-3))),
          OptimizerParamGroup(biases, std::make_unique<AdamOptions>(AdamOptions(1e-2)))};
      return std::make_shared<Adam>(groups, AdamOptions(1e-2));
    }
    case OptimizerKind::kAdamW:
      return std::make_shared<AdamW>(module.parameters(), AdamWOptions(1e-2).weight_decay(0.05).amsgrad(true));
    case OptimizerKind::kRmsprop:
      return std::make_shared<RMSprop>(module.parameters(), RMSpropOptions(1e-3).momentum(0.5));
    case OptimizerKind::kAdagrad:
      return std::make_shared<Adagrad>(module.parameters(), AdagradOptions(1e-2));
  }
  return nullptr;
}

struct PairConfig {
  OptimizerKind kind = OptimizerKind::kAdam;
  ddp::Options options;
  int steps = 4;
  // Micro-steps per step: all but the last under no_sync().
  int accumulate = 1;
  // Who runs the `side` head: every rank, rank 0 only, or none.
  enum class Side { kAll, kRankZero, kNone } side = Side::kAll;
  bool scheduler = false;   // a StepLR over each optimizer, stepped after each step
  bool set_to_none = true;  // zero_grad's argument
  std::string hook;         // "", "allreduce" or "fp16": a communication hook on both models
  ddp::OverlapOptions overlap;
};

struct PairOutcome {
  bool equal = false;              // every parameter, bit for bit, after every step
  std::string first_difference;    // "step 2: fc1.weight (max |diff| 1e-7)"
  bool no_sync_untouched = true;   // no parameter changed during a no_sync() backward
  int64_t updated_in_backward = 0; // of the overlapped optimizer, at the last step
  int64_t reported_early = 0;      // ReducerStats::buckets_reported_early, overlapped model
};

inline at::Tensor seeded_randn(uint64_t seed, at::IntArrayRef shape) {
  return torch::randn(shape, at::detail::createCPUGenerator(seed));
}

// Gives `module` the parameter values of `initial` (made on the main thread: LibTorch's
// default generator is shared by thread ranks).
inline void copy_parameters(const OverlapNet& initial, OverlapNet& module) {
  torch::NoGradGuard no_grad;
  auto params = module->named_parameters();
  for (const auto& p : initial->named_parameters()) params[p.key()].copy_(p.value());
}

inline std::shared_ptr<ddp::CommHook> make_hook(const std::string& name) {
  if (name == "allreduce") return ddp::hooks::allreduce();
  if (name == "fp16") return ddp::hooks::fp16_compress();
  return nullptr;
}

inline PairOutcome run_optimizer_pair(int rank, const std::shared_ptr<ProcessGroup>& pg, const OverlapNet& initial,
                                      const PairConfig& c) {
  PairOutcome out;
  OverlapNet plain_net, overlap_net;
  copy_parameters(initial, plain_net);
  copy_parameters(initial, overlap_net);
  ddp::DistributedDataParallel plain(plain_net, pg, c.options);
  ddp::DistributedDataParallel overlapped(overlap_net, pg, c.options);
  if (!c.hook.empty()) {
    plain->register_comm_hook(make_hook(c.hook));
    overlapped->register_comm_hook(make_hook(c.hook));
  }
  auto reference = make_optimizer(c.kind, *plain_net);
  auto inner = make_optimizer(c.kind, *overlap_net);
  auto opt = overlapped->overlap_optimizer(inner, c.overlap);
  std::unique_ptr<torch::optim::StepLR> plain_lr, overlap_lr;
  if (c.scheduler) {
    plain_lr = std::make_unique<torch::optim::StepLR>(*reference, 2, 0.5);
    overlap_lr = std::make_unique<torch::optim::StepLR>(opt->optimizer(), 2, 0.5);
  }
  const bool use_side = c.side == PairConfig::Side::kAll || (c.side == PairConfig::Side::kRankZero && rank == 0);
  out.equal = true;
  for (int step = 0; step < c.steps; ++step) {
    reference->zero_grad(c.set_to_none);
    opt->zero_grad(c.set_to_none);
    for (int micro = 0; micro < c.accumulate; ++micro) {
      const uint64_t seed = 1000 + 100 * static_cast<uint64_t>(step) + 10 * static_cast<uint64_t>(micro) + rank;
      const auto x = seeded_randn(seed, {8, 16});
      const auto y = seeded_randn(seed + 7, {8, 4});
      const bool sync = micro + 1 == c.accumulate;
      std::vector<at::Tensor> before;
      if (!sync) {
        for (const auto& p : overlap_net->parameters()) before.push_back(p.detach().clone());
      }
      {
        std::optional<ddp::NoSyncGuard> guard_plain, guard_overlapped;
        if (!sync) {
          guard_plain.emplace(plain->no_sync());
          guard_overlapped.emplace(overlapped->no_sync());
        }
        torch::mse_loss(plain(x, use_side), y).backward();
        torch::mse_loss(overlapped(x, use_side), y).backward();
      }
      if (!sync) {
        auto params = overlap_net->parameters();
        for (size_t k = 0; k < params.size(); ++k) out.no_sync_untouched &= torch::equal(params[k], before[k]);
      }
    }
    if (c.overlap.clip_grad_value()) {
      torch::nn::utils::clip_grad_value_(plain_net->parameters(), *c.overlap.clip_grad_value());
    }
    if (c.overlap.max_grad_norm()) {
      // Every group's parameters (Optimizer::parameters() is the first group's only).
      std::vector<at::Tensor> all;
      for (const auto& group : reference->param_groups()) all.insert(all.end(), group.params().begin(), group.params().end());
      torch::nn::utils::clip_grad_norm_(all, *c.overlap.max_grad_norm(), c.overlap.norm_type());
    }
    reference->step();
    opt->step();
    if (plain_lr) {
      plain_lr->step();
      overlap_lr->step();
    }
    auto a = plain_net->named_parameters();
    for (const auto& p : overlap_net->named_parameters()) {
      if (out.equal && !torch::equal(p.value(), a[p.key()])) {
        out.equal = false;
        out.first_difference = "step " + std::to_string(step) + ": " + p.key() + " (max |diff| " +
                               std::to_string((p.value() - a[p.key()]).abs().max().item<double>()) + ")";
      }
    }
  }
  out.updated_in_backward = opt->updated_in_backward();
  out.reported_early = overlapped->reducer().stats().buckets_reported_early;
  return out;
}

} // namespace ddp::test
