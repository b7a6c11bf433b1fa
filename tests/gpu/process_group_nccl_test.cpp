// The ProcessGroup conformance tests (tests/support/process_group_conformance.h), run
// against the NCCL world group on this rank's GPU.
#include "process_group_conformance.h"
#include "world.h"

DDP_PROCESS_GROUP_CONFORMANCE("[nccl]", ddp::test::world_ptr, at::TensorOptions().device(ddp::test::world_device()))
