#include "thread_ranks.h"

#include <ATen/Parallel.h>
#include <cxxabi.h>
#include <fmt/format.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "world.h"

namespace ddp::test {
namespace {

std::string current_exception_type() {
  const std::type_info* type = abi::__cxa_current_exception_type();
  if (type == nullptr) return "unknown";
  int status = 0;
  char* name = abi::__cxa_demangle(type->name(), nullptr, nullptr, &status);
  std::string out = status == 0 && name != nullptr ? name : type->name();
  std::free(name);
  return out;
}

// Restores LibTorch's intra-op thread count when the run ends: the rank threads run on
// one each (several ranks share few cores), other tests keep theirs.
class OneIntraOpThread {
 public:
  OneIntraOpThread() : previous_(at::get_num_threads()) { at::set_num_threads(1); }
  ~OneIntraOpThread() { at::set_num_threads(previous_); }

 private:
  int previous_;
};

} // namespace

std::vector<RankOutcome> run_ranks_in(const std::shared_ptr<ThreadWorld>& world, const RankBody& body,
                                      const RunOptions& options) {
  const int n = world->size();
  OneIntraOpThread one_thread;
  std::vector<RankOutcome> outcomes(static_cast<size_t>(n));
  std::mutex mutex;
  std::condition_variable done_cv;
  std::vector<bool> done(static_cast<size_t>(n), false);
  int finished = 0;

  // The groups are created here, before any rank starts, and each is then owned by its
  // thread alone: it is destroyed when that rank's body returns.
  std::vector<std::shared_ptr<ThreadProcessGroup>> groups;
  for (int r = 0; r < n; ++r) groups.push_back(world->group(r));

  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r, pg = std::move(groups[static_cast<size_t>(r)])]() mutable {
      RankOutcome outcome;
      outcome.rank = r;
      {
        ThreadWorldScope scope(pg);
        try {
          body(r, std::move(pg));
        } catch (const std::exception& e) {
          outcome.exception = std::current_exception();
          outcome.error = e.what();
          outcome.error_type = current_exception_type();
        } catch (...) {
          outcome.exception = std::current_exception();
          outcome.error = "(not a std::exception)";
          outcome.error_type = current_exception_type();
        }
      } // the scope's reference to the group goes here: this rank has finished
      std::lock_guard<std::mutex> lock(mutex);
      outcomes[static_cast<size_t>(r)] = std::move(outcome);
      done[static_cast<size_t>(r)] = true;
      finished += 1;
      done_cv.notify_all();
    });
  }

  auto all_done = [&] { return finished == n; };
  std::unique_lock<std::mutex> lock(mutex);
  if (!done_cv.wait_for(lock, options.timeout, all_done)) {
    lock.unlock();
    // Hung ranks wait on Works (or in barrier): fail them all, then give them a moment.
    world->abort_all(fmt::format("the thread-rank runner gave up after {} ms: a rank did not return",
                                 options.timeout.count()));
    lock.lock();
    if (!done_cv.wait_for(lock, options.grace, all_done)) {
      std::string hung;
      for (int r = 0; r < n; ++r) {
        if (!done[static_cast<size_t>(r)]) hung += fmt::format("{}{}", hung.empty() ? "" : ",", r);
      }
      std::fprintf(stderr,
                   "[thread ranks] rank(s) %s of %d still running %lld ms after the run's timeout and the abort of "
                   "every group; ending the process (a hung rank must fail the test, not hang ctest)\n",
                   hung.c_str(), n, static_cast<long long>(options.grace.count()));
      std::fflush(stderr);
      std::_Exit(124);
    }
  }
  lock.unlock();
  for (auto& t : threads) t.join();
  return outcomes;
}

std::string describe_errors(const std::vector<RankOutcome>& outcomes) {
  std::string out;
  for (const auto& o : outcomes) {
    if (o.ok()) continue;
    out += fmt::format("rank {}: {}: {}\n", o.rank, o.error_type, o.error);
  }
  return out;
}

} // namespace ddp::test
