// Options of ddp::DistributedDataParallel and ddp::Reducer. Names and defaults
// follow torch.nn.parallel.DistributedDataParallel so a PyTorch user can carry
// their settings over unchanged. Set them the LibTorch way, chained:
//   ddp::Options().bucket_cap_mb(10).find_unused_parameters(true)
// and read them with the same name: options.bucket_cap_mb(). The DDP_* environment
// variables of docs/configuration.md replace the values set here.
#pragma once

#include <c10/core/ScalarType.h>
#include <torch/arg.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ddp/defaults.h>

namespace ddp {

// Options::bucket_cap_autotune: the candidate caps and how long each is timed (docs/configuration.md,
// "Bucket-cap autotune"). Set it chained, as Options: BucketCapAutotune().candidates_mb({1, 4, 25}).
struct BucketCapAutotune {
  // The bucket_cap_mb values tried, in this order. Each must be > 0.
  TORCH_ARG(std::vector<double>, candidates_mb) = {1, 2, 4, 8, 16, 25};
  // Synchronised iterations run with each candidate before its timing starts (the first
  // steps after a rebuild touch new buffers). >= 0.
  TORCH_ARG(int64_t, warmup_iterations) = 2;
  // Synchronised iterations timed per candidate; each rank keeps the median. >= 1.
  TORCH_ARG(int64_t, iterations_per_candidate) = 6;
};

struct Options {
  // How the host reads what keeps the ranks in step; see step_check below.
  enum class StepCheck { kAuto, kStrict, kDeferred };
  // wire_dtype_overrides: the parameters whose name matches `pattern` ('*' matches any
  // run of characters, e.g. "*.bias", "*norm*") send their gradients as `dtype`.
  struct WireDtype {
    std::string pattern;
    c10::ScalarType dtype;
  };
  using BucketCapAutotune = ddp::BucketCapAutotune;

  // Bucket cap in MiB: gradients are reduced in buckets of about this size.
  TORCH_ARG(double, bucket_cap_mb) = 25.0;
  // Cap of the first bucket (the last layers' gradients), smaller so that the first
  // collective starts early in the backward pass.
  TORCH_ARG(double, first_bucket_cap_mb) = 1.0;
  // Per-bucket caps in MiB, as PyTorch's bucket_cap_mb_list (pytorch/pytorch #169026):
  // bucket k (in bucket order, counted per dtype, device and wire dtype, like the first
  // bucket; a gradient reduced alone by in_place_min_mb does not count) closes at entry k,
  // the last entry repeating, e.g. {1, 4, 25}. Non-empty, it replaces first_bucket_cap_mb
  // and bucket_cap_mb. Every entry must be > 0.
  TORCH_ARG(std::vector<double>, bucket_cap_mb_list) = {};
  // libddp extension (Horovod's autotune; PyTorch has none): set, the reducer replaces
  // bucket_cap_mb by each candidate in turn, one rebuild each (the same gradient-ready order
  // as the rebuild after the first iteration), from the second synchronised iteration on,
  // and times every synchronised backward (first hook to the end of finalize). After the
  // last candidate every rank sends its median per candidate to rank 0, which picks the
  // candidate with the smallest slowest-rank median and broadcasts it; every rank rebuilds
  // with that cap and tuning stops (ReducerStats::autotuned_bucket_cap_mb, a timeline
  // event, a log line at INFO on rank 0). first_bucket_cap_mb and in_place_min_mb keep their
  // values. Not with bucket_cap_mb_list (an error) or a communication hook (register_comm_hook
  // refuses it); no_sync() iterations are not timed. Unset (default): no tuning.
  TORCH_ARG(std::optional<BucketCapAutotune>, bucket_cap_autotune) = std::nullopt;
  // PyTorch's bucket_cap_mb=None (pytorch/pytorch #121640): the first iteration reduces
  // one bucket per dtype, device and wire dtype, with no cap (in_place_min_mb applies from
  // the rebuild on);
  // the rebuild after it lays the buckets out with the caps above, in the observed order.
  // Fewer, larger collectives in an iteration that overlaps poorly anyway (its order is a
  // guess), at the price of one flat buffer the size of all gradients until the rebuild.
  TORCH_ARG(bool, first_iteration_one_bucket) = false;
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
  // PyTorch's name (pytorch/pytorch#151503), libddp's semantics and default: with
  // find_unused_parameters or static_graph, a bucket none of whose parameters gets a
  // gradient on ANY rank is not all-reduced (the parameters keep their .grad untouched,
  // as they would anyway). Each rank's unused set travels in the section header it sends
  // anyway, so nothing is assumed of the other ranks (PyTorch's flag requires every rank
  // to have the same unused set and does not check it) and no collective is added. On
  // by default: the gradients written are the same bits either way (docs/semantics.md,
  // "Unused parameters"). false: every bucket is all-reduced every step. No effect with a
  // communication hook (it is handed every bucket).
  TORCH_ARG(bool, skip_all_reduce_unused_params) = true;
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
  // libddp extension (docs/semantics.md, "Reproducible reduction"): each gradient
  // element's average is the sum of the ranks' gradients added in rank order 0, 1, ...,
  // n-1, then divided by n: the same bits whatever bucket_cap_mb, first_bucket_cap_mb,
  // in_place_min_mb, gradient_as_bucket_view, static_graph, find_unused_parameters, the
  // bucket rebuild or the library's algorithm for a message size. Sent as an owner-sums
  // exchange (as many bytes as a ring all-reduce). A communication hook's all-reduces
  // become ordered sums too. Off by default: it changes which bits the sum rounds to,
  // not its accuracy.
  TORCH_ARG(bool, reproducible) = false;
  // libddp extension: the dtype gradients travel in, e.g. at::kBFloat16 to halve the
  // bytes of float32 gradients. Unlike the compression hooks, the sums are computed in
  // accumulate_dtype, not on the wire dtype, in rank order (so this is reproducible too):
  // only each rank's gradient and the final average are rounded to the wire dtype.
  // Unset: the gradient's own dtype.
  TORCH_ARG(std::optional<c10::ScalarType>, wire_dtype) = std::nullopt;
  // libddp extension: the dtype each element's sum is computed in when wire_dtype or
  // reproducible is set. Unset: the gradient's dtype, float32 for float16 and bfloat16.
  TORCH_ARG(std::optional<c10::ScalarType>, accumulate_dtype) = std::nullopt;
  // libddp extension: per-parameter wire dtypes by name, the first matching pattern
  // winning over wire_dtype: {{"*.bias", at::kFloat}, {"*norm*", at::kFloat}} keeps
  // biases and norms exact on the wire. Buckets are split by wire dtype. A pattern that
  // matches no parameter is an error (a typo would otherwise pass silently).
  TORCH_ARG(std::vector<WireDtype>, wire_dtype_overrides) = {};
  // The parameters whose gradients are sparse (COO), by name, as PyTorch's
  // expect_sparse_gradient: each is reduced on its own, its ranks' indices and values
  // gathered, summed in rank order and divided (docs/semantics.md, "Sparse gradients"),
  // and its .grad stays sparse. DistributedDataParallel adds the weight of every
  // torch::nn::Embedding and EmbeddingBag built with sparse(true) itself; list others here
  // (a bare ddp::Reducer sees no module). Every rank must declare the same ones (checked
  // at construction, naming the parameter); a declared parameter that gets a dense
  // gradient, or an undeclared one that gets a sparse gradient, is an error on every rank.
  TORCH_ARG(std::vector<std::string>, expect_sparse_gradients) = {};
  // How long the reducer waits for a collective before it throws ddp::TimeoutError.
  // The environment variable DDP_TIMEOUT_S replaces the default (not a value set here).
  TORCH_ARG(std::chrono::milliseconds, timeout) = kDefaultTimeout;
  // Write a Chrome-trace timeline of hooks, buckets and collectives to this path
  // (a ".rank<R>" suffix is added before the extension). DDP_TIMELINE overrides it.
  TORCH_ARG(std::string, timeline_path);
};

} // namespace ddp
