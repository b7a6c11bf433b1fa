// An in-process ddp::ProcessGroup for tests: N ranks as threads of one process over
// shared memory (gloo's test/base_test.h runs its ranks the same way), so whole
// DistributedDataParallel instances run at world 2-4 inside the unit-test binary, under
// the sanitizers, without mpirun.
//
// A ThreadWorld is created for N ranks and hands each rank its ThreadProcessGroup. Every
// collective returns its Work at once and is matched with the other ranks' calls by
// per-rank sequence number (the k-th call of every rank forms slot k). A slot completes
// on the thread of the last rank to arrive, under the world's one mutex, and only after
// the slot before it: a rank's collectives complete in issue order. What real MPI would
// turn into a hang or silent corruption is an error here: matching calls that disagree
// (op, element count, dtype, root) fail every rank's Work of that slot with a CommError
// naming both calls; a rank whose group was destroyed or aborted fails the slots it will
// never join, on every other rank, with a CommError naming it. A peer that never arrives
// leaves the slot pending, and Work::wait(timeout) throws ddp::TimeoutError.
//
// Sums are deterministic: the inputs are added in rank order 0..n-1 into a fresh buffer
// (in the tensor's dtype, as at::add rounds), then copied to every rank's tensor.
//
// Fault injection (ThreadWorld::inject, before the ranks start): delay rank r's k-th
// collective (the calling thread sleeps before issuing it: a slow rank), fail it (the
// data is exchanged and the peers complete; rank r's Work finishes with a CommError and
// its tensor is left as it was), or drop it (never issued to the peers, so the slot and
// every later one stay pending until a timeout; rank r's own Work stays pending too).
#pragma once

#include <ddp/process_group.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ddp::test {

class ThreadProcessGroup;

// What to do to one collective of one rank (ThreadWorld::inject).
struct Fault {
  enum class Kind { kDelay, kFail, kDrop };
  Kind kind = Kind::kDelay;
  int rank = 0;
  // The rank's k-th collective call, counted from 1 (allreduce, broadcast, allgather and
  // barrier alike): the sequence() of its Work.
  uint64_t collective = 1;
  std::chrono::milliseconds delay{0}; // kDelay only

  static Fault delay_of(int rank, uint64_t collective, std::chrono::milliseconds delay) {
    return Fault{Kind::kDelay, rank, collective, delay};
  }
  static Fault fail(int rank, uint64_t collective) { return Fault{Kind::kFail, rank, collective, {}}; }
  static Fault drop(int rank, uint64_t collective) { return Fault{Kind::kDrop, rank, collective, {}}; }
};

// The shared state of N thread ranks: the pending slots and the faults to inject. Owned
// jointly by the ranks' groups (and whoever created it).
class ThreadWorld : public std::enable_shared_from_this<ThreadWorld> {
 public:
  static std::shared_ptr<ThreadWorld> create(int size);

  int size() const { return size_; }
  // Rank r's group. Each rank's group is created once: a second call for the same rank
  // throws (two groups of one rank would share its sequence numbers).
  std::shared_ptr<ThreadProcessGroup> group(int rank);
  // Registers a fault; call before the ranks issue the collective it names.
  void inject(const Fault& fault);
  // Aborts every rank's group (the runner's last resort when a rank hangs).
  void abort_all(const std::string& reason);

 private:
  friend class ThreadProcessGroup;
  explicit ThreadWorld(int size);

  // One rank's call, as the slot sees it.
  struct Call {
    enum class Op { kAllreduce, kBroadcast, kAllgather, kBarrier };
    Op op = Op::kBarrier;
    std::string description; // "allreduce of 10 x Float", names the call in errors
    at::ScalarType dtype = at::kFloat;
    int64_t numel = 0;
    int root = -1;
    at::Tensor tensor;               // allreduce/broadcast: in place; allgather: the input
    std::vector<at::Tensor> outputs; // allgather
    std::shared_ptr<Work> work;
    bool fail = false; // injected: this rank's Work fails, its tensor is not written
  };
  struct Slot {
    std::vector<std::unique_ptr<Call>> calls; // by rank; null until that rank issues
    int arrived = 0;
  };
  struct RankState {
    uint64_t issued = 0;   // collectives this rank issued (its last sequence number)
    bool gone = false;     // group destroyed or aborted: it issues nothing more
    std::string gone_why;  // what the peers' slots it never joins report
    std::vector<std::shared_ptr<Work>> dropped; // injected drops, pending for good
    // Its resolved calls, released by its own thread (at its next call or when it leaves):
    // a tensor or error freed on another rank's thread is a race for TSan, which cannot
    // see the ordering that LibTorch's uninstrumented reference counts provide.
    std::vector<std::unique_ptr<Call>> resolved;
  };

  // Issues rank `rank`'s call (the group's methods); returns its Work.
  std::shared_ptr<Work> issue(int rank, std::unique_ptr<Call> call);
  void leave(int rank, const std::string& why, bool fail_own);
  // Completes or fails every slot that can be, in order. Caller holds mutex_.
  void advance_locked();
  void complete_slot_locked(uint64_t sequence, Slot& slot);
  std::string mismatch_locked(uint64_t sequence, const Slot& slot) const;

  const int size_;
  mutable std::mutex mutex_;
  std::map<uint64_t, Slot> slots_;  // issued by some rank, not yet resolved
  uint64_t next_ = 1;               // the first unresolved slot
  std::map<uint64_t, std::string> failed_; // resolved slots that failed for want of a rank: why
  std::vector<RankState> ranks_;
  std::vector<bool> handed_out_;
  std::vector<Fault> faults_;
};

// Rank r of a ThreadWorld. Destroying it means the rank finished (like a process that
// exits): the collectives it already issued still pair with the peers', and the peers'
// later ones fail with a CommError naming it.
class ThreadProcessGroup final : public ProcessGroup {
 public:
  ThreadProcessGroup(std::shared_ptr<ThreadWorld> world, int rank);
  ~ThreadProcessGroup() override;

  int rank() const override { return rank_; }
  int size() const override { return world_->size(); }
  std::string backend() const override { return "threads"; }

  std::shared_ptr<Work> allreduce(at::Tensor tensor) override;
  std::shared_ptr<Work> broadcast(at::Tensor tensor, int root) override;
  std::shared_ptr<Work> allgather(std::vector<at::Tensor> outputs, at::Tensor input) override;
  // The owner-sums exchange of the built-in backends (rank j adds and divides chunk j),
  // made of two allgathers; blocks until done.
  std::shared_ptr<Work> allreduce_ordered(at::Tensor tensor, OrderedReduce how) override;
  void barrier() override;
  // Fails this rank's pending collectives and every later call with a CommError that says
  // `reason`; the peers' collectives that this rank will now never join fail too.
  void abort(const std::string& reason) override;

  const std::shared_ptr<ThreadWorld>& world() const { return world_; }

 private:
  void check_tensor(const at::Tensor& tensor, const char* op) const;

  const std::shared_ptr<ThreadWorld> world_;
  const int rank_;
};

} // namespace ddp::test
