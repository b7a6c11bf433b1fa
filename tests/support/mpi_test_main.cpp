// Catch2 main for the multi-process tests, run under mpirun (the MPI backend) or under
// torchrun with DDP_TEST_BACKEND=gloo (PyTorch's gloo, through libddp's c10d adapter),
// so the same reducer tests run on both. Every rank runs every
// test and asserts on its own results; after each test the ranks sum their failures
// so rank 0 can say which ranks failed; at exit every rank returns non-zero if any
// rank failed. A watchdog ends the job when one test runs past DDP_TEST_TIMEOUT_S
// (default 120 s), so a broken test fails instead of hanging the suite.
#define CATCH_CONFIG_RUNNER
#define CATCH_CONFIG_EXTERNAL_INTERFACES
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include <ddp/ddp.h>

#include "world.h"

#include "rank_listener.h"

int main(int argc, char** argv) {
  // Tests run 2-3 ranks on few cores: one compute thread each.
  at::set_num_threads(1);
  // Chosen by the ctest entry (tests/CMakeLists.txt), not by users: "mpi" unless set.
  const char* backend = std::getenv("DDP_TEST_BACKEND");
  auto pg = ddp::init_process_group(backend && *backend ? backend : "mpi");
  ddp::test::set_world(pg);
  ddp::test::TestWatchdog watchdog("test");
  ddp::test::rank_listener_state().watchdog = &watchdog;

  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  if (pg->rank() != 0) {
    // Only rank 0 prints the summary; the others report failures on stderr.
    session.configData().reporterName = "compact";
  }
  const auto& config = session.configData();
  if (config.listTests || config.listTestNamesOnly || config.listTags || config.listReporters) {
    return session.run() > 0 ? 0 : 1; // listing: run() returns how many it listed
  }
  const int local_failures = session.run();
  ddp::test::rank_listener_state().watchdog = nullptr;
  int64_t total = 0;
  try {
    total = ddp::test::sum_over_ranks(local_failures);
  } catch (const std::exception& e) {
    // The ranks are out of step after a failed test: report and fail without hanging.
    std::fprintf(stderr, "[test rank %d] could not sum failures across ranks: %s\n", pg->rank(), e.what());
    std::fflush(stderr);
    std::_Exit(1);
  }
  if (pg->rank() == 0) {
    std::printf("multi-process tests on %d ranks: %s (%lld failed assertion groups summed over ranks)\n",
                pg->size(), total == 0 ? "all passed" : "FAILED", static_cast<long long>(total));
  }
  ddp::test::set_world(nullptr);
  pg.reset();
  return total == 0 ? 0 : 1;
}
