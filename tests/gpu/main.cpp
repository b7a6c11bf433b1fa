// The gpu tests' main. Exits with 77, which ctest reads as "skipped" (SKIP_RETURN_CODE),
// when this machine has no usable CUDA device, so a CPU-only run reports the gpu tests
// as skipped rather than passed or failed. Otherwise creates the NCCL world process
// group (ddp::test::world(): world 1 on cuda:0 when started plainly, world N under
// torchrun or mpirun, on the device init_process_group binds) and runs Catch.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <torch/cuda.h>

#include <exception>
#include <cstdlib>
#include <iostream>

#include <ddp/init.h>

#include "world.h"

int main(int argc, char** argv) {
  constexpr int kSkipped = 77;
  if (!torch::cuda::is_available()) {
    std::cout << "SKIPPED: no CUDA device (torch::cuda::is_available() is false); the gpu tests need a GPU and its "
                 "driver. Run scripts/gpu-check.sh on a GPU machine."
              << std::endl;
    return kSkipped;
  }
  try {
    // The library picks the device the way a trainer's would: LOCAL_RANK,
    // OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID or SLURM_LOCALID, else rank modulo the
    // visible devices (so ranks under mpirun without LOCAL_RANK do not all take cuda:0).
    auto pg = ddp::init_process_group("nccl");
    ddp::test::set_world(pg, pg->device());
  } catch (const std::exception& e) {
    std::cerr << "gpu tests: cannot create the NCCL process group: " << e.what() << std::endl;
    return 1;
  }
  const int failures = Catch::Session().run(argc, argv);
  ddp::test::set_world(nullptr);
  // Catch returns the failure count; 77 failures must not read as "skipped".
  return failures == kSkipped ? 1 : failures;
}
