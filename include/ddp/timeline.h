// Events of the reducer's life on one rank, for a Chrome-trace / Perfetto view of what
// overlaps with what. Recording is a branch on a bool when the timeline is off.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace ddp {

class Timeline {
 public:
  using Clock = std::chrono::steady_clock;

  enum class Kind : uint8_t {
    kHook,        // a parameter's gradient hook (index = parameter)
    kBucketReady, // a bucket's last slot was filled (instant; index = bucket)
    kCollective,  // a bucket's all-reduce, start to end on the comm backend (index = bucket)
    kUsedFlags,   // the used-flags all-reduce
    kFinalize,    // the end-of-backward callback, whole
    kFinalizeWait,// finalize waiting for the collectives
    kBackward,    // first hook to end of finalize
    kHookCollective, // a collective a communication hook issued, start to end (index = bucket)
    kAutotuneCandidate, // Options::bucket_cap_autotune: one candidate's timed iterations, first start
                        // to last end (index = candidate, bytes = its cap, value = the slowest
                        // rank's median backward in ns)
    kAutotuneChoice,    // the cap chosen (instant, at the decision; index = candidate, bytes = cap)
    kOptimizerStep, // an overlapped optimizer's update of a bucket's parameters (index = bucket)
  };

  struct Event {
    Kind kind;
    int64_t index;
    int64_t iteration;
    Clock::time_point start;
    Clock::time_point end; // == start for instants
    // kCollective, kHookCollective: the bytes of the tensor handed to the collective (for
    // an allgather, the input), and the operation ("allreduce", "allreduce_ordered",
    // "broadcast", "allgather"); 0 and null otherwise.
    int64_t bytes = 0;
    const char* op = nullptr; // a string literal
    int64_t value = 0;        // kAutotuneCandidate: the slowest rank's median, ns; 0 otherwise
  };

  explicit Timeline(bool enabled = false) : enabled_(enabled) {}

  bool enabled() const { return enabled_; }
  void set_enabled(bool enabled) { enabled_ = enabled; }

  void record(Kind kind, int64_t index, int64_t iteration, Clock::time_point start, Clock::time_point end,
              int64_t bytes = 0, const char* op = nullptr, int64_t value = 0) {
    if (enabled_) {
      events_.push_back(Event{kind, index, iteration, start, end, bytes, op, value});
    }
  }

  const std::vector<Event>& events() const { return events_; }
  void clear() { events_.clear(); }

  // Writes the events as a Chrome-trace JSON array, pid = rank, one thread per kind.
  // parameter_names resolves kHook indices; times are microseconds since `origin`.
  // Collectives carry "bytes" in their args; a hook's are named "<op> bucket <b>" in the
  // category "hook_collective", on the communication row beside the reducer's own.
  void write_chrome_trace(const std::string& path, int rank,
                          const std::vector<std::string>& parameter_names,
                          Clock::time_point origin) const;

  static const char* kind_name(Kind kind);

 private:
  bool enabled_;
  std::vector<Event> events_;
};

} // namespace ddp
