// Models whose parameters' gradient hooks run more than once per backward (docs/semantics.md,
// "Parameters whose hook runs more than once"), for the thread-rank and mpirun tests, and
// the plain (single graph task) model with the same arithmetic, which is the oracle.
//
// ReentrantCheckpoint is reentrant activation checkpointing written as a LibTorch custom
// function, as PyTorch's torch.utils.checkpoint(use_reentrant=True) does it in Python: the
// forward runs the block without recording a graph; the backward recomputes the block
// with grad mode on and calls torch::autograd::backward inside its own backward, a nested
// graph task that accumulates straight into the parameters' .grad. The block's parameters
// are inputs of the function, so that find_unused_parameters' graph walk reaches them.
#pragma once

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cstdint>

namespace ddp::test {

// The checkpointed block: tanh(h @ w) @ v.
inline torch::Tensor multi_fire_block(const torch::Tensor& h, const torch::Tensor& w, const torch::Tensor& v) {
  return torch::tanh(h.matmul(w)).matmul(v);
}

struct ReentrantCheckpoint : torch::autograd::Function<ReentrantCheckpoint> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& h, const torch::Tensor& w,
                               const torch::Tensor& v) {
    ctx->save_for_backward({h, w, v});
    return multi_fire_block(h, w, v);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    torch::Tensor h = saved[0].detach().requires_grad_(true);
    torch::Tensor out;
    {
      torch::AutoGradMode enable(true);
      out = multi_fire_block(h, saved[1], saved[2]);
    }
    torch::autograd::backward({out}, {grads[0]}); // the nested backward: w's and v's hooks run in it
    return {h.grad(), torch::Tensor(), torch::Tensor()};
  }
};

// Which graph shape a forward takes; every shape computes the same function.
enum class FireShape {
  kPlain,       // one graph task: every hook runs once (the oracle)
  kShared,      // the block checkpointed; w_shared is also used outside it: its hook runs in
                // the nested task and again in the outer one
  kTwoBlocks,   // two checkpointed blocks through w_shared (separately accumulated paths):
                // its hook runs in each nested task
};

// h = tanh(x @ w_in); c = tanh(B(h; w_shared, w_block) + h @ w_shared);
// out = (B(c; w_shared, w_block2) + c) @ w_out, B = multi_fire_block. w_shared's hook runs
// once (kPlain), twice (kShared: the first block's nested task, then the outer task), or
// three times (kTwoBlocks: each block's nested task, then the outer task). The
// parameters' inputs to a checkpoint also reach their accumulators in the outer task,
// carrying no gradient: a run that adds nothing.
struct MultiFireNetImpl : torch::nn::Module {
  MultiFireNetImpl() {
    auto gen = at::detail::createCPUGenerator(7);
    w_in = register_parameter("w_in", torch::randn({4, 6}, gen) * 0.5);
    w_shared = register_parameter("w_shared", torch::randn({6, 6}, gen) * 0.4);
    w_block = register_parameter("w_block", torch::randn({6, 6}, gen) * 0.4);
    w_block2 = register_parameter("w_block2", torch::randn({6, 6}, gen) * 0.4);
    w_out = register_parameter("w_out", torch::randn({6, 3}, gen) * 0.5);
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor h = torch::tanh(x.matmul(w_in));
    const bool first = shape != FireShape::kPlain;
    const bool second = shape == FireShape::kTwoBlocks;
    const torch::Tensor b1 = first ? ReentrantCheckpoint::apply(h, w_shared, w_block) : multi_fire_block(h, w_shared, w_block);
    // kShared: w_shared outside the block as well.
    const torch::Tensor c = torch::tanh(b1 + h.matmul(w_shared));
    const torch::Tensor b2 = second ? ReentrantCheckpoint::apply(c, w_shared, w_block2) : multi_fire_block(c, w_shared, w_block2);
    return (b2 + c).matmul(w_out);
  }
  // Rounding errors along the longest chain feeding a gradient (w_in's), the counting
  // rules of world.h (reduction_tolerance): forward x@w_in 4, tanh 1, block 6 + 1 + 6, the
  // outside product 6 and the sum 1, tanh 1, second block 6 + 1 + 6, + c 1, @ w_out 6;
  // loss: square 1, mean over 3 B terms + the scale 1; backward: the same chain again (47),
  // the runs added in the slot (one per run: at most 3) and the late contribution added
  // (1); the average 1; w_in's dW sums over the global batch B.
  static constexpr int64_t reduction_terms(int64_t global_batch) { return 2 * 47 + 6 + 4 * global_batch; }
  torch::Tensor w_in, w_shared, w_block, w_block2, w_out;
  FireShape shape = FireShape::kPlain;
};
TORCH_MODULE(MultiFireNet);

// Rank q's shard of `rows` samples at step s.
inline torch::Tensor multi_fire_input(int q, int s, int64_t rows) {
  return torch::randn({rows, 4}, at::detail::createCPUGenerator(static_cast<uint64_t>(1000 * s + q + 1)));
}

} // namespace ddp::test
