// MpiRuntime: the one communication thread that owns every MPI call of this process.
// It initialises MPI on itself (so any MPI thread level works), runs the collectives
// of every MPI process group in one FIFO queue (so they complete in issue order and
// never block the backward pass), and finalises MPI at process exit. A process-wide
// singleton because MPI can be initialised only once per process.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <ddp/work.h>

#include "common/env.h"

namespace ddp::mpi {

class MpiRuntime {
 public:
  // Starts the thread and MPI on first use. Throws CommError when MPI cannot start.
  static MpiRuntime& instance();
  ~MpiRuntime();

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }

  // Runs `fn` on the communication thread after everything queued before it; `work`
  // records start and end, and receives any exception `fn` throws.
  void enqueue(std::shared_ptr<Work> work, std::function<void()> fn);

  // Runs `fn` on the communication thread and returns its result (set-up calls).
  template <typename F>
  auto call(F fn) -> decltype(fn()) {
    auto task = std::make_shared<std::packaged_task<decltype(fn())()>>(std::move(fn));
    auto result = task->get_future();
    push([task] { (*task)(); });
    return result.get();
  }

 private:
  MpiRuntime();
  void push(std::function<void()> fn);
  void loop(std::promise<void>& started);
  void start_mpi();
  void apply_thread_priority();

  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable queue_cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  // What the thread is running now, for the message printed if it never returns.
  // Shared, not a raw pointer: the exit path reads it while the communication thread
  // finishes the work and drops the closure that owned it (ASan found that race).
  std::mutex in_flight_mutex_;
  std::shared_ptr<const Work> in_flight_;
  std::shared_ptr<const Work> in_flight() {
    std::lock_guard<std::mutex> lock(in_flight_mutex_);
    return in_flight_;
  }
  void set_in_flight(std::shared_ptr<const Work> work) {
    std::lock_guard<std::mutex> lock(in_flight_mutex_);
    in_flight_ = std::move(work);
  }
  std::atomic<bool> exited_{false};
  bool owns_mpi_ = false;
  int world_rank_ = 0;
  int world_size_ = 1;
  // From the environment, read once by the constructor (common/env.h).
  detail::CommThreadPriority priority_ = detail::CommThreadPriority::kAuto;
  int local_ranks_ = 1;                                // ranks on this node
  std::optional<std::chrono::milliseconds> exit_timeout_; // DDP_EXIT_TIMEOUT_S; unset: no bound
};

} // namespace ddp::mpi
