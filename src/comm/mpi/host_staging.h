// HostStaging: how the MPI backend takes CUDA tensors, as gloo does for its CUDA
// collectives: MPI runs on pinned host copies, and CUDA events order the copies with the
// GPU work around them. A real fallback for users without NCCL, and what lets the CUDA
// reducer run at world 2 and 3 on one GPU (NCCL refuses two ranks on one device).
//
//   issuing thread (a hook, finalize): copy each CUDA tensor the collective reads into a
//     pinned host buffer, non_blocking, on the tensor's device's *current* stream, so it
//     reads what the caller's stream has produced; record an event after the copies;
//   communication thread: wait for that event, run MPI on the host buffers, copy each
//     tensor the collective writes back to its device on a side stream of LibTorch's pool
//     and wait for it, then complete the Work.
// So Work::wait() returning means the device tensors hold the result: the consumer's
// later kernels are ordered after the copy by the host. CPU tensors pass through as
// they are. Device-generic (c10::Event, c10::impl::VirtualGuardImpl), so the MPI backend
// needs no CUDA headers and builds against a CPU-only LibTorch too.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Event.h>

#include <memory>
#include <vector>

namespace ddp::mpi {

class HostStaging {
 public:
  // `tensors`: the collective's tensors; `reads[i]` / `writes[i]`: whether the collective
  // reads / writes tensors[i]. Queues the copies of the CUDA ones that it reads.
  HostStaging(std::vector<at::Tensor> tensors, const std::vector<bool>& reads, std::vector<bool> writes);

  // True when any of `tensors` is a CUDA tensor (only then is staging needed).
  static bool needed(const std::vector<at::Tensor>& tensors);

  // The tensor MPI works on in place of tensors[i]: its host copy, or itself on the CPU.
  const at::Tensor& host(size_t i) const { return host_[i]; }

  // Communication thread: blocks until the copies to the host are complete.
  void wait_copied_in();
  // Communication thread: copies the written tensors back to their devices and blocks
  // until they are there.
  void copy_out();

 private:
  std::vector<at::Tensor> device_;
  std::vector<at::Tensor> host_;
  std::vector<bool> writes_;
  std::unique_ptr<c10::Event> copied_in_; // null when nothing was copied in
};

} // namespace ddp::mpi
