// The ProcessGroup conformance tests against PyTorch's c10d::ProcessGroupNCCL behind
// libddp's adapter: the world group when the gpu tests run with DDP_TEST_BACKEND=c10d-nccl
// (ctest gpu_c10d_nccl_tests, gpu_c10d_nccl_np2). Tagged [c10d-nccl]; the other gpu entries
// leave the tag out, since there the world is another backend.
#include <ddp/config.h>

#if DDP_HAVE_C10D_NCCL
#include "process_group_conformance.h"
#include "world.h"

TEST_CASE("c10d-nccl: the world is PyTorch's NCCL group on this rank's GPU", "[gpu][c10d-nccl]") {
  auto group = ddp::test::world_ptr();
  REQUIRE(group->backend() == "c10d:nccl");
  REQUIRE(group->device().is_cuda());
  REQUIRE(group->device() == ddp::test::world_device());
  REQUIRE(group->rank() < group->size());
  group->barrier();
}

DDP_PROCESS_GROUP_CONFORMANCE("[c10d-nccl]", ddp::test::world_ptr,
                              at::TensorOptions().device(ddp::test::world_device()))
#endif
