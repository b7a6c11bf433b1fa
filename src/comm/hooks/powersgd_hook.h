// PowerSGDHook: rank-r compression of each matrix-shaped gradient with error feedback
// (Vogels et al., 2019; PyTorch's powerSGD_hook). Per bucket and iteration: the gradients
// of one dimension, and matrices too small to gain, go in one all-reduce as they are; for
// the others P = M Q is all-reduced, orthogonalised (Gram-Schmidt, the same on every
// rank: every rank holds the same summed P), Q = M^T P is all-reduced, and M becomes
// P Q^T. State is kept per parameter name, so it does not depend on the bucket layout.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <unordered_map>

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

  // Orthogonalises the columns of `matrix` (rows x r) in place, as the hook does.
  static void orthogonalize(at::Tensor& matrix, double epsilon);

 private:
  std::shared_ptr<CommFuture> run_step(GradBucket& bucket, int64_t iteration);
  // The Q of parameter `name` (m x r), new and random unless warm_start kept one.
  at::Tensor& q_for(const std::string& name, int64_t cols, int64_t rank, const at::TensorOptions& options,
                    int64_t iteration);

  const PowerSGDOptions options_;
  int64_t iteration_ = 0; // backward passes this hook has seen (counted at the last bucket)
  std::unordered_map<std::string, at::Tensor> q_;
  std::unordered_map<std::string, at::Tensor> error_;
};

} // namespace ddp::hooks
