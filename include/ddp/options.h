// Options of ddp::DistributedDataParallel and ddp::Reducer. Names and defaults
// follow torch.nn.parallel.DistributedDataParallel so a PyTorch user can carry
// their settings over unchanged. Set them the LibTorch way, chained:
//   ddp::Options().bucket_cap_mb(10).find_unused_parameters(true)
// and read them with the same name: options.bucket_cap_mb(). The DDP_* environment
// variables of docs/configuration.md replace the values set here.
#pragma once

#include <torch/arg.h>

#include <chrono>
#include <string>

#include <ddp/defaults.h>

namespace ddp {

struct Options {
  // How the host reads what keeps the ranks in step; see step_check below.
  enum class StepCheck { kAuto, kStrict, kDeferred };

  // Bucket cap in MiB: gradients are reduced in buckets of about this size.
  TORCH_ARG(double, bucket_cap_mb) = 25.0;
  // Cap of the first bucket (the last layers' gradients), smaller so that the first
  // collective starts early in the backward pass.
  TORCH_ARG(double, first_bucket_cap_mb) = 1.0;
  // Walk the autograd graph from the forward outputs and mark the parameters that
  // cannot receive a gradient as ready at once. A speed option only: unused
  // parameters are handled correctly without it.
  TORCH_ARG(bool, find_unused_parameters) = false;
  // Broadcast the module's buffers (e.g. BatchNorm running stats) from rank 0
  // before each forward.
  TORCH_ARG(bool, broadcast_buffers) = true;
  // Broadcast rank 0's parameters and buffers when the module is wrapped (PyTorch's
  // init_sync). false: you guarantee every rank starts from the same state (one seed, or
  // the same checkpoint loaded on every rank); the wrapper skips the broadcast and instead
  // compares a checksum of every parameter and buffer across ranks, ModelMismatchError
  // naming the first that differs. Ignored by a bare ddp::Reducer, which broadcasts nothing.
  TORCH_ARG(bool, init_sync) = true;
  // .grad becomes a view into the bucket: no copy back after the reduction.
  TORCH_ARG(bool, gradient_as_bucket_view) = false;
  // The set of used parameters and their ready order are the same every iteration:
  // learned in the first one, later iterations mark the unused ones ready up front (no
  // graph walk). They keep the header and the used-flags exchange, which make a changed
  // graph or a skipped step on one rank an error on every rank (docs/semantics.md).
  TORCH_ARG(bool, static_graph) = false;
  // libddp extension: a gradient of at least this many MiB is all-reduced alone, in
  // place in its own .grad, skipping the copy into a bucket and back (smaller ones share
  // buckets up to the caps). -1 (default): 1 MiB for CPU parameters, where the copies
  // cost memory bandwidth the step needs, and off for CUDA, where fewer, larger NCCL
  // calls matter more. 0 turns it off.
  TORCH_ARG(double, in_place_min_mb) = -1.0;
  // libddp extension: when the host reads what keeps the ranks in step (each section's
  // header and each backward's used flags and statuses; docs/semantics.md, "Ranks in
  // step"). kStrict: before a section launches anything, and at the end of every
  // backward (one host synchronisation per step on CUDA); a rank's error leaves every rank
  // recoverable at once. kDeferred: once the results have arrived, at the latest a few
  // collectives later, so that a CUDA step never waits on the host in the steady state; an
  // error is raised on every rank at its next reducer call, after that step's gradients
  // were written, and the reducer then stops. A backward in which this rank left a
  // parameter without a gradient still reads the flags at once (it must know whether
  // another rank used it). kAuto (default): kDeferred on a CUDA process group (NCCL),
  // kStrict otherwise. DDP_STEP_CHECK=auto|strict|deferred replaces the value set here.
  TORCH_ARG(StepCheck, step_check) = StepCheck::kAuto;
  // How long the reducer waits for a collective before it throws ddp::TimeoutError.
  // The environment variable DDP_TIMEOUT_S replaces the default (not a value set here).
  TORCH_ARG(std::chrono::milliseconds, timeout) = kDefaultTimeout;
  // Write a Chrome-trace timeline of hooks, buckets and collectives to this path
  // (a ".rank<R>" suffix is added before the extension). DDP_TIMELINE overrides it.
  TORCH_ARG(std::string, timeline_path);
};

} // namespace ddp
