// The built-in communication hooks (ddp::CommHook), after PyTorch's
// torch.distributed.algorithms.ddp_comm_hooks: register one with
// Reducer::register_comm_hook or DistributedDataParallel::register_comm_hook.
#pragma once

#include <torch/arg.h>

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>

#include <ddp/comm_hook.h>

namespace ddp::hooks {

// Sums the bucket across the ranks in one all-reduce: what the reducer does without a hook
// (a baseline for a hook of your own).
std::shared_ptr<CommHook> allreduce();

// Sends nothing: each rank keeps its own gradients divided by the world size. For
// measuring what communication costs; never for training.
std::shared_ptr<CommHook> noop();

// Casts the bucket to `dtype` (float16 or bfloat16), runs `inner` on the cast copy, and
// casts its result back into the bucket: half the bytes on the link for float32
// gradients. Gradients are divided before the cast, so float16 sees the average's
// magnitude, not the sum's.
std::shared_ptr<CommHook> compress(std::shared_ptr<CommHook> inner, c10::ScalarType dtype);
// compress(allreduce(), float16) and compress(allreduce(), bfloat16).
std::shared_ptr<CommHook> fp16_compress();
std::shared_ptr<CommHook> bf16_compress();

// PowerSGD (Vogels et al., 2019): each gradient of a parameter with two or more dimensions,
// seen as an n x m matrix M, is sent as a rank-r approximation: P = M Q (n x r) is
// all-reduced and orthogonalised, then Q = M^T P (m x r) is all-reduced, and M ~ P Q^T.
// (n + m) r values are sent instead of n m. Gradients of one dimension, and matrices that
// would not shrink by min_compression_rate, are all-reduced as they are. The knobs and
// their defaults are PyTorch's.
struct PowerSGDOptions {
  // r: the rank of the approximation (capped at min(n, m)).
  TORCH_ARG(int64_t, matrix_approximation_rank) = 1;
  // Plain all-reduce for the first iterations (the hook counts them): PowerSGD's error
  // feedback works best once the loss has settled a little.
  TORCH_ARG(int64_t, start_powerSGD_iter) = 1000;
  // Compress a matrix only when n m > min_compression_rate * (n + m) r (as PyTorch).
  TORCH_ARG(double, min_compression_rate) = 2.0;
  // Add what the approximation left out to the next iteration's gradient (per rank).
  TORCH_ARG(bool, use_error_feedback) = true;
  // Start each iteration's Q from the last one's (one power iteration per step, better
  // approximations over time) instead of a new random matrix.
  TORCH_ARG(bool, warm_start) = true;
  // Added to each column's norm before dividing by it (0: none; avoids 0/0 for all-zero
  // gradients).
  TORCH_ARG(double, orthogonalization_epsilon) = 0.0;
  // Seeds the initial Q matrices, the same on every rank.
  TORCH_ARG(uint64_t, random_seed) = 0;
};
// Its state (state()/load_state()): "iteration", and per compressed parameter NAME
// "q.NAME" and, with error feedback, "error.NAME" (the same parameters). Keyed by parameter
// name, so it survives the reducer's bucket rebuild and a checkpoint.
std::shared_ptr<CommHook> powersgd(PowerSGDOptions options = {});

} // namespace ddp::hooks
