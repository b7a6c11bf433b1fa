// What the multi-rank test mains share (tests/support/mpi_test_main.cpp for the CPU tests,
// tests/gpu/main.cpp for the GPU ones): after each test the ranks sum their failures, so
// that all of them fail together and rank 0 names the failed ranks, and a watchdog ends the
// job when one test runs past DDP_TEST_TIMEOUT_S (default 120 s), so a broken test fails
// instead of hanging the suite. Include it once per binary, in its main, after
// <catch2/catch.hpp> with CATCH_CONFIG_EXTERNAL_INTERFACES: it registers the listener.
#pragma once

#include <ATen/ATen.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include <ddp/ddp.h>

#include "world.h"

namespace ddp::test {

class TestWatchdog {
 public:
  explicit TestWatchdog(std::string label) : label_(std::move(label)), thread_([this] { run(); }) {}
  ~TestWatchdog() {
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
    limit_ = limit;
    armed_ = true;
    cv_.notify_all();
  }
  void disarm() {
    std::lock_guard<std::mutex> lock(mutex_);
    armed_ = false;
  }
  const std::string& label() const { return label_; }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      if (armed_ && std::chrono::steady_clock::now() >= deadline_) {
        std::fprintf(stderr, "[%s rank %d] TIMEOUT: test '%s' ran past %lld s; ending the job\n", label_.c_str(),
                     world_ptr()->rank(), name_.c_str(), static_cast<long long>(limit_.count()));
        std::fflush(stderr);
        std::_Exit(124);
      }
      cv_.wait_for(lock, std::chrono::milliseconds(200));
    }
  }
  const std::string label_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::string name_;
  std::chrono::steady_clock::time_point deadline_{};
  std::chrono::seconds limit_{0};
  bool armed_ = false;
  bool stop_ = false;
  std::thread thread_;
};

// Set by the main while its tests run (null while listing: nothing is reduced then), and
// where the per-test failure flags are reduced.
struct RankListenerState {
  TestWatchdog* watchdog = nullptr;
  at::Device reduction_device = at::kCPU;
};
inline RankListenerState& rank_listener_state() {
  static RankListenerState state;
  return state;
}

inline std::chrono::seconds test_timeout() {
  const char* s = std::getenv("DDP_TEST_TIMEOUT_S");
  return std::chrono::seconds(s ? std::atoi(s) : 120);
}

struct RankListener : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(Catch::TestCaseInfo const& info) override {
    if (auto* w = rank_listener_state().watchdog) w->arm(info.name, test_timeout());
  }
  void testCaseEnded(Catch::TestCaseStats const& stats) override {
    TestWatchdog* watchdog = rank_listener_state().watchdog;
    if (watchdog == nullptr) return; // listing, or no world group
    watchdog->disarm();
    auto& pg = world();
    at::Tensor flags = at::zeros({pg.size()}, at::TensorOptions().dtype(at::kInt));
    flags[pg.rank()] = stats.totals.assertions.failed > 0 ? 1 : 0;
    try {
      flags = flags.to(rank_listener_state().reduction_device);
      pg.allreduce(flags)->wait(std::chrono::seconds(60));
      flags = flags.cpu();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "[%s rank %d] after '%s' the ranks are out of step: %s\n", watchdog->label().c_str(),
                   pg.rank(), stats.testInfo.name.c_str(), e.what());
      std::fflush(stderr);
      std::_Exit(1);
    }
    if (pg.rank() == 0 && flags.sum().item<int>() > 0) {
      std::string ranks;
      for (int r = 0; r < pg.size(); ++r) {
        if (flags[r].item<int>()) ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
      }
      std::fprintf(stderr, "[%s] '%s' FAILED on rank(s) %s of %d\n", watchdog->label().c_str(),
                   stats.testInfo.name.c_str(), ranks.c_str(), pg.size());
    }
  }
};

} // namespace ddp::test

// The macro pastes its argument into a name: it needs an unqualified one.
using DdpRankListener = ddp::test::RankListener;
CATCH_REGISTER_LISTENER(DdpRankListener)
