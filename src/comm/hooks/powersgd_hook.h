// PowerSGDHook: rank-r compression of each matrix-shaped gradient with error feedback
// (Vogels et al., 2019; PyTorch's powerSGD_hook). Per bucket and iteration: the gradients
// of one dimension, and matrices too small to gain, go in one all-reduce as they are; for
// the others P = M Q is all-reduced, orthogonalised (Gram-Schmidt, the same on every
// rank: every rank holds the same summed P), Q = M^T P is all-reduced, and M becomes
// P Q^T. State is kept per parameter name, so it does not depend on the bucket layout.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <ddp/comm_hook.h>
#include <ddp/hooks.h>

namespace ddp::hooks {

class PowerSGDHook final : public CommHook {
 public:
  // Throws InvalidArgumentError naming the option when one is out of range.
  explicit PowerSGDHook(PowerSGDOptions options);

  std::string name() const override;
  std::shared_ptr<CommFuture> run(GradBucket& bucket) override;
  State state() const override;
  void load_state(const State& state) override;

  // Orthogonalises the columns of `matrices` (rows x r, or a batch B x rows x r) in place,
  // as the hook does.
  static void orthogonalize(at::Tensor& matrices, double epsilon);

 private:
  // Compressed gradients of one shape (n x m, rank r) in a bucket, reduced as a batch.
  struct Group {
    int64_t n, m, r;
    std::vector<std::string> names;
    std::vector<std::vector<int64_t>> shapes;
    at::Tensor index; // their elements' positions in the bucket, in order (a batch)
    int64_t offset;   // >= 0: one matrix (large, or alone of its shape), reduced where it lies
  };
  // Matrices of at most this many elements are batched with those of their shape; larger
  // ones are reduced alone, in place.
  static constexpr int64_t kBatchMaxElements = 1 << 16;
  // A bucket's groups and the positions of its uncompressed gradients.
  struct Layout {
    std::vector<std::string> names; // the bucket's parameters, in order (what it was made for)
    c10::Device device = c10::kCPU;
    std::vector<Group> groups;
    at::Tensor plain_index; // undefined when every gradient is compressed
    int64_t p_size = 0;
    int64_t q_size = 0;
  };
  // One step of a group: its matrices (gathered), and its views of P and Q.
  struct Batch {
    const Group* group;   // in the layout the step's continuations hold
    at::Tensor matrices;  // B x n x m
    at::Tensor p;         // B x n x r, in the P buffer
    at::Tensor q;         // B x m x r, in the Q buffer
    at::Tensor q_started; // the Q the step began from
  };
  // The layout of `bucket`, made once per bucket layout.
  std::shared_ptr<const Layout> layout_for(const GradBucket& bucket);
  std::shared_ptr<CommFuture> run_step(GradBucket& bucket, int64_t iteration);
  // The Q of parameter `name` (m x r), new and random unless warm_start kept one.
  at::Tensor& q_for(const std::string& name, int64_t cols, int64_t rank, const at::TensorOptions& options,
                    int64_t iteration);

  const PowerSGDOptions options_;
  int64_t iteration_ = 0; // backward passes this hook has seen (counted at the last bucket)
  std::unordered_map<std::string, at::Tensor> q_;
  std::unordered_map<std::string, at::Tensor> error_;
  std::unordered_map<const void*, std::shared_ptr<Layout>> layouts_;
};

} // namespace ddp::hooks
