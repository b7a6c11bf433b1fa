#include "comm/mpi/host_staging.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <optional>

namespace ddp::mpi {

bool HostStaging::needed(const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors) {
    if (t.defined() && t.is_cuda()) return true;
  }
  return false;
}

HostStaging::HostStaging(std::vector<at::Tensor> tensors, const std::vector<bool>& reads, std::vector<bool> writes)
    : device_(std::move(tensors)), writes_(std::move(writes)) {
  host_.reserve(device_.size());
  const c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
  std::optional<c10::Stream> stream;
  for (size_t i = 0; i < device_.size(); ++i) {
    const at::Tensor& t = device_[i];
    if (!t.is_cuda()) {
      host_.push_back(t);
      continue;
    }
    // The caching host allocator recycles pinned blocks, so steady-state staging does
    // not allocate; it also keeps a block alive until the copy that uses it is done.
    at::Tensor h = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
    if (reads[i]) {
      c10::DeviceGuard guard(t.device());
      h.copy_(t, /*non_blocking=*/true); // on the current stream: after what produced t
      stream = cuda.getStream(t.device());
    }
    host_.push_back(std::move(h));
  }
  if (stream) {
    copied_in_ = std::make_unique<c10::Event>(c10::DeviceType::CUDA);
    copied_in_->record(*stream);
  }
}

void HostStaging::wait_copied_in() {
  if (!copied_in_) return;
  // On the MPI thread, which has no current device of its own: without this, its CUDA
  // calls would create a context on device 0.
  c10::DeviceGuard guard(copied_in_->device());
  copied_in_->synchronize();
}

void HostStaging::copy_out() {
  const c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
  for (size_t i = 0; i < device_.size(); ++i) {
    if (!writes_[i] || !device_[i].is_cuda()) continue;
    // A side stream: the null stream would wait for every kernel queued on the device,
    // the backward's included; nothing but this copy writes the tensor now.
    const c10::Stream side = cuda.getStreamFromGlobalPool(device_[i].device(), /*isHighPriority=*/false);
    c10::StreamGuard on_side(side);
    device_[i].copy_(host_[i], /*non_blocking=*/true);
    side.synchronize();
  }
}

} // namespace ddp::mpi
