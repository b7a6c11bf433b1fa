#include "comm/mpi/mpi_runtime.h"

#include <ATen/Parallel.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "comm/mpi/mpi_check.h"
#include "comm/mpi/mpi_types.h"
#include "common/check.h"
#include "common/env.h"
#include "common/logging.h"
#include "common/timeouts.h"

namespace ddp::mpi {
namespace {

// After this long waiting at exit, say (at INFO) what the exit waits for.
constexpr std::chrono::seconds kExitNotice{10};

const char* thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
  }
  return "unknown";
}

int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::thread::hardware_concurrency());
}

} // namespace

// DDP_COMM_THREAD_PRIORITY=auto|low|normal. "low" (SCHED_IDLE) lets the communication
// thread run only on a core the compute threads leave free. Where this node's ranks
// already fill every core, overlapping communication with the backward pass cannot gain
// time and only adds contention (measured in docs/performance.md); where a core is free,
// the collectives still overlap. "auto" (default) picks low when the node's ranks times
// the intra-op threads of this one reach the cores this process may use.
void MpiRuntime::apply_thread_priority() {
  const int rank = world_rank_;
  bool low = priority_ == detail::CommThreadPriority::kLow;
  if (priority_ == detail::CommThreadPriority::kAuto) low = local_ranks_ * at::get_num_threads() >= usable_cores();
  detail::log(detail::LogLevel::kInfo, rank, "MPI communication thread priority: {} ({} ranks on this node, {} "
              "compute threads each, {} usable cores)", low ? "low (SCHED_IDLE)" : "normal", local_ranks_,
              at::get_num_threads(), usable_cores());
  if (!low) return;
  sched_param param{};
  param.sched_priority = 0;
  if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &param) != 0) {
    detail::log(detail::LogLevel::kWarn, rank, "could not lower the MPI thread's priority: {}", std::strerror(errno));
  }
}

MpiRuntime& MpiRuntime::instance() {
  // Destroyed at exit so that MPI_Finalize runs; constructed on first use, after
  // LibTorch's own statics, so it is destroyed before them.
  static MpiRuntime runtime;
  return runtime;
}

MpiRuntime::MpiRuntime() {
  // The settings are read before MPI starts, so that a bad value fails without leaving
  // MPI initialised (the rank is not known yet: the message says "rank ?").
  const detail::Env env;
  priority_ = env.comm_thread_priority();
  if (const auto local = env.local_world_size()) local_ranks_ = local->value;
  exit_timeout_ = env.exit_timeout();
  std::promise<void> started;
  auto ready = started.get_future();
  thread_ = std::thread([this, &started] { loop(started); });
  try {
    ready.get();
  } catch (...) {
    thread_.join();
    throw;
  }
}

void MpiRuntime::start_mpi() {
  int initialized = 0;
  DDP_CHECK_MPI(MPI_Initialized(&initialized));
  if (initialized) {
    // The application initialised MPI itself; our thread may call MPI only if the
    // level allows calls from a thread other than the one that initialised it.
    int provided = MPI_THREAD_SINGLE;
    DDP_CHECK_MPI(MPI_Query_thread(&provided));
    if (provided < MPI_THREAD_SERIALIZED) {
      throw CommError(fmt::format(
          "MPI was initialised by the application with {}; libddp's communication thread needs "
          "MPI_THREAD_SERIALIZED or higher. Call MPI_Init_thread(..., MPI_THREAD_SERIALIZED, ...) or let libddp "
          "initialise MPI (create the process group before any MPI call).",
          thread_level_name(provided)));
    }
  } else {
    int provided = MPI_THREAD_SINGLE;
    DDP_CHECK_MPI(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
    owns_mpi_ = true;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  DDP_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_));
  DDP_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
  detail::set_world_rank(world_rank_);
  create_custom_types();
}

void MpiRuntime::loop(std::promise<void>& started) {
  try {
    start_mpi();
    apply_thread_priority();
    started.set_value();
  } catch (...) {
    started.set_exception(std::current_exception());
    return;
  }
  for (;;) {
    std::function<void()> fn;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      queue_cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) break; // stopping, and everything queued has run
      fn = std::move(queue_.front());
      queue_.pop_front();
    }
    fn();
  }
  free_custom_types();
  if (owns_mpi_) {
    MPI_Finalize();
  }
  exited_.store(true);
}

void MpiRuntime::push(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    DDP_CHECK(!stopping_, "a collective was issued while the MPI runtime shuts down (process exit)");
    queue_.push_back(std::move(fn));
  }
  queue_cv_.notify_one();
}

void MpiRuntime::enqueue(std::shared_ptr<Work> work, std::function<void()> fn) {
  push([this, work = std::move(work), fn = std::move(fn)] {
    set_in_flight(work);
    work->mark_started();
    try {
      fn();
      work->finish();
    } catch (...) {
      work->finish(std::current_exception());
    }
    set_in_flight(nullptr);
  });
}

MpiRuntime::~MpiRuntime() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  queue_cv_.notify_one();
  // A rank that finished waits for its peers as long as they are alive: the communication
  // thread runs what is still queued, then MPI_Finalize, which returns once every rank
  // gets there (a peer saving a checkpoint is not killed). A dead peer ends the job through
  // mpirun. Only two things abort from here: a collective that a wait already gave up on
  // (its peers are gone or out of step, so it can never complete), and the explicit
  // DDP_EXIT_TIMEOUT_S bound (read, and rejected when malformed, at start-up).
  const std::optional<std::chrono::milliseconds> exit_timeout = exit_timeout_;
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = exit_timeout ? detail::deadline_after(*exit_timeout) : std::chrono::steady_clock::time_point::max();
  bool noticed = false;
  while (!exited_.load()) {
    const std::shared_ptr<const Work> stuck = in_flight();
    const auto now = std::chrono::steady_clock::now();
    std::string reason;
    if (stuck != nullptr && stuck->timed_out()) {
      reason = fmt::format("collective #{} ({}) never completed, and a wait on it already timed out: another rank "
                           "stopped issuing the same collectives (it failed, skipped one, or finished early)",
                           stuck->sequence(), stuck->description());
    } else if (now >= deadline) {
      reason = stuck != nullptr
                   ? fmt::format("collective #{} ({}) has not completed after DDP_EXIT_TIMEOUT_S={} s",
                                 stuck->sequence(), stuck->description(), exit_timeout->count() / 1000.0)
                   : fmt::format("the other ranks have not finished (MPI_Finalize) after DDP_EXIT_TIMEOUT_S={} s",
                                 exit_timeout->count() / 1000.0);
    }
    if (!reason.empty()) {
      detail::log_line(detail::LogLevel::kError, world_rank_,
                       fmt::format("process exit: {}. Aborting the MPI job so that no rank hangs.", reason));
      MPI_Abort(MPI_COMM_WORLD, 3);
      std::_Exit(3);
    }
    if (!noticed && now - start >= kExitNotice) {
      noticed = true;
      detail::log(detail::LogLevel::kInfo, world_rank_,
                  "process exit: waiting for {} ({} s so far); the other ranks are still running. Set "
                  "DDP_EXIT_TIMEOUT_S to bound this wait.",
                  stuck != nullptr ? fmt::format("collective #{} ({})", stuck->sequence(), stuck->description())
                                   : std::string("the other ranks to finish (MPI_Finalize)"),
                  kExitNotice.count());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  thread_.join();
}

} // namespace ddp::mpi
