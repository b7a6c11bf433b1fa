// The ProcessGroup conformance tests (tests/support/process_group_conformance.h) against
// the MPI backend with CUDA tensors: what its host staging (src/comm/mpi/host_staging.h)
// must get right, checked with closed-form results. Tagged [mpi-cuda]; it needs MPI
// started by mpirun, so ctest runs it in the multi-rank gpu entries only (gpu_mpi_np*,
// gpu_nccl_np2), where ranks may share one GPU.
#include <ddp/config.h>

#if DDP_HAVE_MPI
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "process_group_conformance.h"
#include "world.h"

namespace {

// One MPI group for every case, created at the first case (every rank runs the cases in
// the same order, so they create it together).
std::shared_ptr<ddp::ProcessGroup> mpi_group() {
  static std::shared_ptr<ddp::ProcessGroup> group = ddp::init_process_group("mpi");
  return group;
}

} // namespace

DDP_PROCESS_GROUP_CONFORMANCE("[mpi-cuda]", mpi_group, at::TensorOptions().device(ddp::test::world_device()))

TEST_CASE("mpi-cuda: the collective reads what the producing stream wrote, and the result is there after wait",
          "[mpi-cuda]") {
  auto pg = mpi_group();
  const auto device = ddp::test::world_device();
  REQUIRE(device.is_cuda());
  // Produce the input on a side stream, then issue from it: the staging copy must follow
  // the producer on that (current) stream, not the default one.
  c10::Stream side = c10::impl::VirtualGuardImpl(c10::DeviceType::CUDA).getStreamFromGlobalPool(device, false);
  at::Tensor t;
  std::shared_ptr<ddp::Work> work;
  {
    c10::StreamGuard on_side(side);
    t = at::full({1 << 20}, 1.0f, at::TensorOptions().device(device));
    t.mul_(static_cast<float>(pg->rank() + 1));
    work = pg->allreduce(t);
  }
  work->wait(std::chrono::seconds(60));
  const float n = static_cast<float>(pg->size());
  CHECK(at::equal(t.cpu(), at::full({1 << 20}, n * (n + 1) / 2)));
  CHECK(pg->device().is_cpu()); // the group itself stays on the host
}
#endif
