// CompressHook: runs another hook on a copy of the bucket cast to float16 or bfloat16 and
// casts its result back (PyTorch's fp16_compress_wrapper / bf16_compress_wrapper; with the
// allreduce hook inside, fp16_compress_hook / bf16_compress_hook). On CUDA the casts are
// queued on the current stream, ordered before and after the collective like any other
// kernel: nothing waits on the host.
#pragma once

#include <c10/core/ScalarType.h>

#include <ddp/comm_hook.h>

namespace ddp::hooks {

class CompressHook final : public CommHook {
 public:
  // Throws InvalidArgumentError unless `dtype` is float16 or bfloat16 and `inner` is set.
  CompressHook(std::shared_ptr<CommHook> inner, c10::ScalarType dtype);

  std::string name() const override;
  std::shared_ptr<CommFuture> run(GradBucket& bucket) override;
  // The inner hook's state, under "inner.".
  State state() const override;
  void load_state(const State& state) override;

 private:
  const std::shared_ptr<CommHook> inner_;
  const c10::ScalarType dtype_;
};

} // namespace ddp::hooks
