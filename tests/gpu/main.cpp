// The gpu tests' main: one process per rank (world 1 when started plainly, world N under
// mpirun or torchrun), every rank asserting on its own GPU tensors.
//
// - No usable CUDA device: exits 77, which ctest reads as "skipped" (SKIP_RETURN_CODE), so
//   a CPU-only machine reports the gpu tests as skipped rather than passed or failed.
//   With DDP_REQUIRE_GPU=1 (scripts/gpu-check.sh) it exits 1 instead: on the GPU machine
//   a broken driver must fail the run, not skip it into a pass.
// - DDP_TEST_BACKEND picks the world group: `nccl` (default: libddp's own), `c10d-nccl`
//   (PyTorch's ProcessGroupNCCL through the adapter, in builds with DDP_WITH_C10D_NCCL), or
//   `mpi`, the MPI backend with CUDA tensors (staged through host memory), which lets
//   several ranks share one GPU. Each rank takes device (local rank % visible devices), as
//   a trainer would.
// - As tests/support/mpi_test_main.cpp does for the CPU tests: after each test the ranks
//   sum their failures, so all of them fail together and rank 0 names the failed ranks,
//   and a watchdog ends the job when one test runs past DDP_TEST_TIMEOUT_S (120 s), so a
//   stuck collective fails instead of hanging the suite.
// Listing tests (--list-tests, --list-test-names-only, --list-tags) needs no GPU.
#define CATCH_CONFIG_RUNNER
#define CATCH_CONFIG_EXTERNAL_INTERFACES
#include <catch2/catch.hpp>

#include <c10/cuda/CUDAFunctions.h>
#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>

#include <ddp/init.h>

#include "world.h"

namespace {

constexpr int kSkipped = 77;

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::string(v) == "1";
}

// The rank's index among the ranks on this machine, from the launcher's variables;
// -1 when none is set (a plain start, or a launcher that sets none).
int local_rank_from_env() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"}) {
    if (const char* v = std::getenv(name); v != nullptr && *v != '\0') return std::atoi(v);
  }
  return -1;
}

// The group's collectives for the listener and the final sum: on the CPU for MPI (its
// native path, so a broken CUDA staging shows as failed tests, not as ranks out of step),
// on the rank's GPU for NCCL and c10d-nccl (which take nothing else).
at::Device g_reduction_device = at::kCPU;

// Sums `value` over the ranks; throws on a timeout (the ranks are out of step).
int64_t sum_over_ranks(int64_t value) {
  auto& pg = ddp::test::world();
  at::Tensor t = at::full({1}, value, at::TensorOptions().dtype(at::kLong).device(g_reduction_device));
  pg.allreduce(t)->wait(std::chrono::seconds(60));
  return t.cpu().item<int64_t>();
}

} // namespace

#include "rank_listener.h"

int main(int argc, char** argv) {
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  const auto& config = session.configData();
  if (config.listTests || config.listTestNamesOnly || config.listTags || config.listReporters) {
    return session.run() > 0 ? 0 : 1;  // listing: run() returns how many it listed
  }

  if (!torch::cuda::is_available() || torch::cuda::device_count() == 0) {
    if (env_flag("DDP_REQUIRE_GPU")) {
      std::cout << "FAILED: no CUDA device (torch::cuda::is_available() is false) and DDP_REQUIRE_GPU=1: the gpu "
                   "tests need a GPU and its driver."
                << std::endl;
      return 1;
    }
    std::cout << "SKIPPED: no CUDA device (torch::cuda::is_available() is false); the gpu tests need a GPU and its "
                 "driver. Run scripts/gpu-check.sh on a GPU machine."
              << std::endl;
    return kSkipped;
  }

  const char* backend_env = std::getenv("DDP_TEST_BACKEND");
  const std::string backend = backend_env != nullptr && *backend_env != '\0' ? backend_env : "nccl";
  if (backend != "nccl" && backend != "c10d-nccl" && backend != "mpi") {
    std::cerr << "gpu tests: DDP_TEST_BACKEND=" << backend
              << " is not a backend: use nccl (default), c10d-nccl or mpi" << std::endl;
    return 2;
  }
  std::shared_ptr<ddp::ProcessGroup> pg;
  try {
    if (backend == "nccl" || backend == "c10d-nccl") {
      // The library picks the device the way a trainer's would: LOCAL_RANK,
      // OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID or SLURM_LOCALID, else rank modulo the
      // visible devices (so ranks under mpirun without LOCAL_RANK do not all take cuda:0).
      pg = ddp::init_process_group(backend);
      ddp::test::set_world(pg, pg->device());
      g_reduction_device = pg->device();
    } else {
      // Bind the device before the group exists, so that anything it allocates on the
      // GPU lands there; a launcher without a local rank leaves it to the global rank.
      const int devices = static_cast<int>(torch::cuda::device_count());
      int local = local_rank_from_env();
      if (local >= 0) c10::cuda::set_device(static_cast<c10::DeviceIndex>(local % devices));
      pg = ddp::init_process_group("mpi");
      if (local < 0) local = pg->rank();
      const auto index = static_cast<c10::DeviceIndex>(local % devices);
      c10::cuda::set_device(index);
      ddp::test::set_world(pg, at::Device(at::kCUDA, index));
      g_reduction_device = at::kCPU;
    }
  } catch (const std::exception& e) {
    std::cerr << "gpu tests: cannot create the " << backend << " process group: " << e.what() << std::endl;
    return 1;
  }
  if (pg->rank() != 0) {
    // Only rank 0 prints the summary; the others report failures on stderr.
    session.configData().reporterName = "compact";
  }
  if (pg->rank() == 0) {
    std::cout << "gpu tests: backend " << backend << ", " << pg->size() << " rank(s), rank 0 on "
              << ddp::test::world_device() << " (" << torch::cuda::device_count() << " visible device(s))"
              << std::endl;
  }

  int64_t total = 0;
  {
    ddp::test::TestWatchdog watchdog("gpu test");
    ddp::test::rank_listener_state().watchdog = &watchdog;
    ddp::test::rank_listener_state().reduction_device = g_reduction_device;
    const int local_failures = session.run();
    ddp::test::rank_listener_state().watchdog = nullptr;
    try {
      total = sum_over_ranks(local_failures);
    } catch (const std::exception& e) {
      // The ranks are out of step after a failed test: report and fail without hanging.
      std::fprintf(stderr, "[gpu test rank %d] could not sum failures across ranks: %s\n", pg->rank(), e.what());
      std::fflush(stderr);
      std::_Exit(1);
    }
  }
  if (pg->rank() == 0 && pg->size() > 1) {
    std::printf("gpu tests on %d ranks (%s): %s (%lld failed assertion groups summed over ranks)\n", pg->size(),
                backend.c_str(), total == 0 ? "all passed" : "FAILED", static_cast<long long>(total));
  }
  ddp::test::set_world(nullptr);
  pg.reset();
  // 77 failures must not read as "skipped".
  return total == 0 ? 0 : 1;
}
