#include "thread_process_group.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>
#include <thread>
#include <utility>

#include <ddp/error.h>

#include "comm/argument_checks.h"
#include "comm/ordered_sum.h"

namespace ddp::test {
namespace {

std::string describe(const char* op, const at::Tensor& t) {
  return fmt::format("{} of {} x {} ({:.2f} MiB)", op, t.numel(), c10::toString(t.scalar_type()),
                     static_cast<double>(t.nbytes()) / (1 << 20));
}

bool summable(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
    case at::kDouble:
    case at::kHalf:
    case at::kBFloat16:
    case at::kLong:
    case at::kInt:
    case at::kShort:
    case at::kChar:
    case at::kByte:
      return true;
    default:
      return false;
  }
}

std::exception_ptr comm_error(std::string message) { return std::make_exception_ptr(CommError(std::move(message))); }

} // namespace

// --- ThreadWorld ---

std::shared_ptr<ThreadWorld> ThreadWorld::create(int size) {
  if (size < 1) throw std::invalid_argument(fmt::format("ThreadWorld::create: size {} < 1", size));
  return std::shared_ptr<ThreadWorld>(new ThreadWorld(size));
}

ThreadWorld::ThreadWorld(int size)
    : size_(size), ranks_(static_cast<size_t>(size)), handed_out_(static_cast<size_t>(size), false) {}

std::shared_ptr<ThreadProcessGroup> ThreadWorld::group(int rank) {
  if (rank < 0 || rank >= size_) {
    throw std::invalid_argument(fmt::format("ThreadWorld::group: rank {} is not in [0, {})", rank, size_));
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (handed_out_[static_cast<size_t>(rank)]) {
      throw std::logic_error(fmt::format("ThreadWorld::group: rank {}'s group was already created", rank));
    }
    handed_out_[static_cast<size_t>(rank)] = true;
  }
  return std::make_shared<ThreadProcessGroup>(shared_from_this(), rank);
}

void ThreadWorld::inject(const Fault& fault) {
  if (fault.rank < 0 || fault.rank >= size_ || fault.collective < 1) {
    throw std::invalid_argument(
        fmt::format("ThreadWorld::inject: no collective #{} on rank {} of {}", fault.collective, fault.rank, size_));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  faults_.push_back(fault);
}

void ThreadWorld::abort_all(const std::string& reason) {
  for (int r = 0; r < size_; ++r) leave(r, reason, /*fail_own=*/true);
}

std::shared_ptr<Work> ThreadWorld::issue(int rank, std::unique_ptr<Call> call) {
  std::unique_lock<std::mutex> lock(mutex_);
  RankState& me = ranks_[static_cast<size_t>(rank)];
  me.resolved.clear(); // on this rank's own thread (see RankState::resolved)
  const uint64_t sequence = ++me.issued;
  call->work = std::make_shared<Work>(call->description, sequence, rank);
  if (me.gone) {
    // Aborted: every later call fails with the reason (a destroyed group issues nothing).
    call->work->finish(comm_error(me.gone_why));
    return call->work;
  }
  bool drop = false;
  std::chrono::milliseconds delay{0};
  for (const Fault& f : faults_) {
    if (f.rank != rank || f.collective != sequence) continue;
    switch (f.kind) {
      case Fault::Kind::kDelay: delay += f.delay; break;
      case Fault::Kind::kFail: call->fail = true; break;
      case Fault::Kind::kDrop: drop = true; break;
    }
  }
  if (drop) {
    // Never reaches the peers; its own Work completes only if the rank is aborted.
    me.dropped.push_back(call->work);
    return call->work;
  }
  if (delay.count() > 0) {
    // A slow rank: its call reaches the peers `delay` later (the sequence number is taken,
    // so a later call of this rank cannot overtake it).
    lock.unlock();
    std::this_thread::sleep_for(delay);
    lock.lock();
    if (me.gone) {
      call->work->complete_if_pending(comm_error(me.gone_why));
      return call->work;
    }
  }
  std::shared_ptr<Work> work = call->work;
  if (sequence < next_) {
    // The slot was resolved without this rank: it failed because a peer left.
    auto it = failed_.find(sequence);
    work->finish(comm_error(fmt::format("[ddp rank {}] collective #{} ({}) cannot complete: {}", rank, sequence,
                                        call->description,
                                        it != failed_.end() ? it->second : std::string("the peers gave up on it"))));
    return work;
  }
  Slot& slot = slots_[sequence];
  if (slot.calls.empty()) slot.calls.resize(static_cast<size_t>(size_));
  slot.calls[static_cast<size_t>(rank)] = std::move(call);
  slot.arrived += 1;
  advance_locked();
  return work;
}

void ThreadWorld::leave(int rank, const std::string& why, bool fail_own) {
  std::lock_guard<std::mutex> lock(mutex_);
  RankState& me = ranks_[static_cast<size_t>(rank)];
  if (me.gone) return;
  me.gone = true;
  me.gone_why = why;
  me.resolved.clear();
  for (auto& work : me.dropped) work->complete_if_pending(comm_error(why));
  me.dropped.clear();
  if (fail_own) {
    // Aborted: its calls are withdrawn (the peers' slots will now never complete) and fail
    // here; nothing touches its tensors after this.
    for (auto& [sequence, slot] : slots_) {
      auto& call = slot.calls[static_cast<size_t>(rank)];
      if (!call) continue;
      call->work->complete_if_pending(comm_error(why));
      call.reset();
      slot.arrived -= 1;
    }
  }
  advance_locked();
}

void ThreadWorld::advance_locked() {
  for (auto it = slots_.find(next_); it != slots_.end() && it->first == next_; it = slots_.find(next_)) {
    Slot& slot = it->second;
    if (slot.arrived == size_) {
      complete_slot_locked(next_, slot);
    } else {
      // Can it never complete? A rank that left and has not issued this one never will.
      int absent = -1;
      for (int r = 0; r < size_; ++r) {
        if (!slot.calls[static_cast<size_t>(r)] && ranks_[static_cast<size_t>(r)].gone) {
          absent = r;
          break;
        }
      }
      if (absent < 0) return; // waits for its peers
      const std::string why = fmt::format("rank {} will never issue it: {}", absent,
                                          ranks_[static_cast<size_t>(absent)].gone_why);
      for (int r = 0; r < size_; ++r) {
        auto& call = slot.calls[static_cast<size_t>(r)];
        if (!call) continue;
        call->work->complete_if_pending(comm_error(fmt::format("[ddp rank {}] collective #{} ({}) cannot complete: {}",
                                                               r, next_, call->description, why)));
      }
      failed_[next_] = why;
    }
    for (int r = 0; r < size_; ++r) {
      auto& call = slot.calls[static_cast<size_t>(r)];
      if (call) ranks_[static_cast<size_t>(r)].resolved.push_back(std::move(call));
    }
    slots_.erase(it);
    next_ += 1;
  }
}

std::string ThreadWorld::mismatch_locked(uint64_t sequence, const Slot& slot) const {
  const Call& first = *slot.calls[0];
  for (int r = 1; r < size_; ++r) {
    const Call& other = *slot.calls[static_cast<size_t>(r)];
    const bool same = other.op == first.op && other.numel == first.numel && other.dtype == first.dtype &&
                      other.root == first.root;
    if (!same) {
      auto name = [](const Call& c) {
        return c.op == Call::Op::kBroadcast ? fmt::format("{} from root {}", c.description, c.root) : c.description;
      };
      return fmt::format("collective #{} does not match across ranks: rank 0 issued {}, rank {} issued {}. Every rank "
                         "must issue the same collectives in the same order (real MPI would hang or mix the data)",
                         sequence, name(first), r, name(other));
    }
  }
  return {};
}

void ThreadWorld::complete_slot_locked(uint64_t sequence, Slot& slot) {
  auto& calls = slot.calls;
  for (auto& call : calls) call->work->mark_started();
  std::string error = mismatch_locked(sequence, slot);
  if (error.empty()) {
    try {
      const Call& first = *calls[0];
      switch (first.op) {
        case Call::Op::kAllreduce: {
          // Deterministic: rank order, into a fresh buffer, then copied to every rank.
          at::Tensor sum = calls[0]->tensor.reshape({-1}).clone();
          for (int r = 1; r < size_; ++r) sum.add_(calls[static_cast<size_t>(r)]->tensor.reshape({-1}));
          for (auto& call : calls) {
            if (!call->fail) call->tensor.view({-1}).copy_(sum);
          }
          break;
        }
        case Call::Op::kBroadcast: {
          const at::Tensor source = calls[static_cast<size_t>(first.root)]->tensor.view({-1});
          for (int r = 0; r < size_; ++r) {
            if (r != first.root && !calls[static_cast<size_t>(r)]->fail) {
              calls[static_cast<size_t>(r)]->tensor.view({-1}).copy_(source);
            }
          }
          break;
        }
        case Call::Op::kAllgather:
          for (auto& call : calls) {
            if (call->fail) continue;
            for (int q = 0; q < size_; ++q) {
              call->outputs[static_cast<size_t>(q)].view({-1}).copy_(calls[static_cast<size_t>(q)]->tensor.view({-1}));
            }
          }
          break;
        case Call::Op::kBarrier:
          break;
      }
    } catch (const std::exception& e) {
      error = fmt::format("collective #{} ({}) failed: {}", sequence, calls[0]->description, e.what());
    }
  }
  for (int r = 0; r < size_; ++r) {
    Call& call = *calls[static_cast<size_t>(r)];
    if (!error.empty()) {
      call.work->complete_if_pending(comm_error(fmt::format("[ddp rank {}] {}", r, error)));
    } else if (call.fail) {
      call.work->complete_if_pending(comm_error(fmt::format(
          "[ddp rank {}] collective #{} ({}) failed: injected failure (ThreadWorld fault)", r, sequence,
          call.description)));
    } else {
      call.work->complete_if_pending(nullptr);
    }
  }
}

// --- ThreadProcessGroup ---

ThreadProcessGroup::ThreadProcessGroup(std::shared_ptr<ThreadWorld> world, int rank)
    : world_(std::move(world)), rank_(rank) {}

ThreadProcessGroup::~ThreadProcessGroup() {
  world_->leave(rank_,
                fmt::format("rank {}'s process group was destroyed (that rank finished or left)", rank_),
                /*fail_own=*/false);
}

void ThreadProcessGroup::check_tensor(const at::Tensor& tensor, const char* op) const {
  if (!tensor.defined()) {
    throw InvalidArgumentError(fmt::format("[ddp rank {}] {}: the tensor is undefined", rank_, op));
  }
  if (!tensor.device().is_cpu()) {
    throw InvalidArgumentError(fmt::format("[ddp rank {}] {}: the thread process group handles CPU tensors; got one "
                                           "on {}",
                                           rank_, op, tensor.device().str()));
  }
  if (tensor.is_sparse() || !tensor.is_contiguous()) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] {}: the tensor must be dense and contiguous (call .contiguous() first)", rank_, op));
  }
}

std::shared_ptr<Work> ThreadProcessGroup::allreduce(at::Tensor tensor) {
  check_tensor(tensor, "allreduce");
  if (!summable(tensor.scalar_type())) {
    throw InvalidArgumentError(fmt::format("[ddp rank {}] allreduce: cannot sum dtype {}", rank_,
                                           c10::toString(tensor.scalar_type())));
  }
  auto call = std::make_unique<ThreadWorld::Call>();
  call->op = ThreadWorld::Call::Op::kAllreduce;
  call->description = describe("allreduce", tensor);
  call->dtype = tensor.scalar_type();
  call->numel = tensor.numel();
  call->tensor = std::move(tensor);
  return world_->issue(rank_, std::move(call));
}

std::shared_ptr<Work> ThreadProcessGroup::broadcast(at::Tensor tensor, int root) {
  check_tensor(tensor, "broadcast");
  detail::check_root(rank_, size(), root);
  auto call = std::make_unique<ThreadWorld::Call>();
  call->op = ThreadWorld::Call::Op::kBroadcast;
  call->description = describe("broadcast", tensor);
  call->dtype = tensor.scalar_type();
  call->numel = tensor.numel();
  call->root = root;
  call->tensor = std::move(tensor);
  return world_->issue(rank_, std::move(call));
}

std::shared_ptr<Work> ThreadProcessGroup::allgather(std::vector<at::Tensor> outputs, at::Tensor input) {
  check_tensor(input, "allgather");
  detail::check_allgather_outputs(rank_, size(), outputs, input);
  for (const auto& out : outputs) check_tensor(out, "allgather");
  auto call = std::make_unique<ThreadWorld::Call>();
  call->op = ThreadWorld::Call::Op::kAllgather;
  call->description = describe("allgather", input);
  call->dtype = input.scalar_type();
  call->numel = input.numel();
  call->tensor = std::move(input);
  call->outputs = std::move(outputs);
  return world_->issue(rank_, std::move(call));
}

std::shared_ptr<Work> ThreadProcessGroup::allreduce_ordered(at::Tensor tensor, OrderedReduce how) {
  check_tensor(tensor, "allreduce_ordered");
  const detail::OrderedSum sum(tensor, size(), rank_, how);
  auto work = std::make_shared<Work>(describe("ordered allreduce", tensor), 0, rank_);
  work->mark_started();
  const int n = size();
  // The all-to-all, as an allgather of every rank's packed rows: this rank keeps row
  // `rank_` of each.
  const at::Tensor packed = sum.pack(nullptr).contiguous();
  at::Tensor all = at::empty({n, n, sum.chunk()}, packed.options());
  std::vector<at::Tensor> rows;
  for (int r = 0; r < n; ++r) rows.push_back(all[r]);
  allgather(rows, packed)->wait(timeout());
  at::Tensor pieces = sum.pieces(nullptr);
  for (int r = 0; r < n; ++r) pieces[r].copy_(all[r][rank_]);
  // This rank adds and divides its own chunk only, as on a real backend (a rank whose
  // divisor differed would show here), then the allgather of the sums.
  const at::Tensor mine = sum.add(pieces, nullptr).contiguous();
  at::Tensor gathered = sum.gathered(nullptr);
  std::vector<at::Tensor> sums;
  for (int r = 0; r < n; ++r) sums.push_back(gathered[r]);
  allgather(sums, mine)->wait(timeout());
  sum.unpack(gathered);
  work->finish();
  return work;
}

void ThreadProcessGroup::barrier() {
  auto call = std::make_unique<ThreadWorld::Call>();
  call->op = ThreadWorld::Call::Op::kBarrier;
  call->description = "barrier";
  world_->issue(rank_, std::move(call))->wait(timeout());
}

void ThreadProcessGroup::abort(const std::string& reason) {
  world_->leave(rank_, fmt::format("rank {} aborted its process group: {}", rank_, reason), /*fail_own=*/true);
}

} // namespace ddp::test
