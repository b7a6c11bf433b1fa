// Catch2 main for the multi-process tests, run under mpirun. Every rank runs every
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

namespace {

class Watchdog {
 public:
  Watchdog() : thread_([this] { run(); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void arm(std::string name, std::chrono::seconds limit) {
    std::lock_guard<std::mutex> lock(mutex_);
    name_ = std::move(name);
    deadline_ = std::chrono::steady_clock::now() + limit;
    armed_ = true;
    limit_ = limit;
    cv_.notify_all();
  }
  void disarm() {
    std::lock_guard<std::mutex> lock(mutex_);
    armed_ = false;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      if (armed_ && std::chrono::steady_clock::now() >= deadline_) {
        std::fprintf(stderr, "[test rank %d] TIMEOUT: test '%s' ran past %lld s; ending the job\n",
                     ddp::test::world_ptr()->rank(), name_.c_str(), static_cast<long long>(limit_.count()));
        std::fflush(stderr);
        std::_Exit(124);
      }
      cv_.wait_for(lock, std::chrono::milliseconds(200));
    }
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  std::string name_;
  std::chrono::steady_clock::time_point deadline_{};
  std::chrono::seconds limit_{0};
  bool armed_ = false;
  bool stop_ = false;
  std::thread thread_;
};

Watchdog* g_watchdog = nullptr;

std::chrono::seconds test_timeout() {
  const char* s = std::getenv("DDP_TEST_TIMEOUT_S");
  return std::chrono::seconds(s ? std::atoi(s) : 120);
}

struct RankListener : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(Catch::TestCaseInfo const& info) override {
    if (g_watchdog) g_watchdog->arm(info.name, test_timeout());
  }
  void testCaseEnded(Catch::TestCaseStats const& stats) override {
    if (g_watchdog) g_watchdog->disarm();
    const bool failed = stats.totals.assertions.failed > 0;
    auto& pg = ddp::test::world();
    at::Tensor flags = at::zeros({pg.size()}, at::kInt);
    flags[pg.rank()] = failed ? 1 : 0;
    try {
      pg.allreduce(flags)->wait(std::chrono::seconds(60));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[test rank %d] after '%s' the ranks are out of step: %s\n", pg.rank(),
                   stats.testInfo.name.c_str(), e.what());
      std::fflush(stderr);
      std::_Exit(1);
    }
    if (pg.rank() == 0 && flags.sum().item<int>() > 0) {
      std::string ranks;
      for (int r = 0; r < pg.size(); ++r) {
        if (flags[r].item<int>()) ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
      }
      std::fprintf(stderr, "[test] '%s' FAILED on rank(s) %s of %d\n", stats.testInfo.name.c_str(), ranks.c_str(),
                   pg.size());
    }
  }
};

} // namespace

CATCH_REGISTER_LISTENER(RankListener)

int main(int argc, char** argv) {
  // Tests run 2-3 ranks on few cores: one compute thread each.
  at::set_num_threads(1);
  auto pg = ddp::init_process_group("mpi");
  ddp::test::set_world(pg);
  Watchdog watchdog;
  g_watchdog = &watchdog;

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
  g_watchdog = nullptr;
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
