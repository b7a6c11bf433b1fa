// Helpers shared by the multi-process tests: the world process group, cross-rank
// comparisons, and the oracle's error measure. Expected values never come from the
// code under test: the oracle is plain single-process autograd.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include <ddp/ddp.h>

namespace ddp::test {

// The process group every multi-process test uses (created by the test main).
std::shared_ptr<ProcessGroup> world_ptr();
inline ProcessGroup& world() { return *world_ptr(); }
// `device`: where the group's collectives take their tensors (CPU for MPI, the rank's
// GPU for NCCL); the helpers below move their tensors there.
void set_world(std::shared_ptr<ProcessGroup> pg, at::Device device = at::kCPU);
at::Device world_device();

// While alive, world() on the calling thread (only) is `pg` on the CPU: the thread-rank
// runner (thread_ranks.h) gives each rank thread its own group this way. Other threads,
// and the mpirun tests, keep the group set_world() installed.
class ThreadWorldScope {
 public:
  explicit ThreadWorldScope(std::shared_ptr<ProcessGroup> pg);
  ~ThreadWorldScope();
  ThreadWorldScope(const ThreadWorldScope&) = delete;
  ThreadWorldScope& operator=(const ThreadWorldScope&) = delete;

 private:
  std::shared_ptr<ProcessGroup> previous_;
};

// True on every rank iff every rank holds bit-identical contents (dtype, shape, bytes).
bool identical_across_ranks(const at::Tensor& tensor);

// max |actual - expected| / max(max |expected|, 1e-30): relative to the tensor's scale.
double max_relative_error(const at::Tensor& actual, const at::Tensor& expected);

// Unit roundoff u = eps / 2 of a floating dtype (float, double, half, bfloat16):
// round-to-nearest gives fl(a op b) = (a op b)(1 + d) with |d| <= u.
double unit_roundoff(at::ScalarType dtype);

// The tolerance for comparing two float computations of the same value, DDP's and the
// oracle's, which do the same arithmetic in different orders and groupings (shard sums
// then a sum over ranks, against one sum over the whole batch; other GEMM blockings;
// other SIMD widths under ATEN_CPU_CAPABILITY=default|avx2|avx512).
//
// Bound (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., §3.1,
// Lemma 3.1 and (3.4)-(3.5)): a sum or dot product of n terms, computed in ANY order in
// a dtype with unit roundoff u, satisfies |computed - exact| <= gamma_n * sum |x_i|,
// gamma_n = n u / (1 - n u). Two independent computations are each within gamma_n of
// the exact value, so they are within 2 gamma_n of each other. Along a chain of
// operations (forward, loss, backward, the gradient's own reduction, the SGD update,
// later iterations that start from earlier results) the first-order bounds add and
// gamma_a + gamma_b <= gamma_{a+b} (Lemma 3.3), so `terms` is the number of rounding
// errors along the longest chain that feeds the compared value, counted as:
//   - a dot product or sum of k terms (a Linear's fan-in, +1 for its bias; a
//     convolution's in_channels x kernel area; a batch or spatial reduction): k;
//   - an operation that rounds once (tanh, exp, log, a scaling, a division by the
//     world size, a cast to a narrower dtype, adding a micro-step's gradient): 1;
//   - exact operations (relu and its backward, copies, casts to a wider dtype): 0.
// Each model's count is derived next to the model (tests/support/models.h and the test
// files). Returns 2 gamma_terms; throws if that is >= 1, where the bound says nothing.
//
// No safety factor: the bound already assumes every rounding error is maximal and of
// the same sign, where in practice they behave like a random walk (~sqrt(n) u, Higham
// §2.8). What the bound does not strictly cover is its use against the tensor's scale
// (max_relative_error divides by max |expected|, where the bound has sum |x_i| of each
// element's terms; the two differ by the cancellation in that element) and, for later
// iterations, a first-order treatment of the parameters' differences as roundings; the
// gap between n u and sqrt(n) u (about 10x or more at the sizes used here) absorbs both
// (measured: errors at most 4.2 % of the tolerance, world 2 and 3, under every
// ATEN_CPU_CAPABILITY; tests/run_with_isa.sh). The scale-relative measure is kept
// because it is what a reducer bug changes: a lost, doubled, stale or misplaced
// contribution moves the gradient by a fraction of its scale.
double reduction_tolerance(at::ScalarType dtype, int64_t terms);

// `terms` in iteration `it` (0-based) of a training loop with `per_iteration` terms per
// forward/loss/backward/reduction and an SGD update p - lr * g (2 roundings): iteration
// `it` starts from parameters that the earlier iterations produced, so its chain is
// theirs followed by its own. Gradients of iteration `it`, and parameters after its step:
inline int64_t gradient_terms_at(int64_t per_iteration, int it) { return it * (per_iteration + 2) + per_iteration; }
inline int64_t parameter_terms_after(int64_t per_iteration, int it) { return (it + 1) * (per_iteration + 2); }

// The least precise floating dtype among `tensors` (the largest unit roundoff): the
// working precision of a computation that passes through all of them.
at::ScalarType least_precise_dtype(const std::vector<at::Tensor>& tensors);

// Sum of an integer over all ranks (a small allreduce).
int64_t sum_over_ranks(int64_t value);

// Options with a short timeout, so that a broken test fails instead of hanging.
Options test_options();

} // namespace ddp::test
