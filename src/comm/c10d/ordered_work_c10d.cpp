#include "comm/c10d/ordered_work_c10d.h"

#include <ddp/error.h>

namespace ddp::c10d_adapter {

void OrderedWorkC10d::Queue::push(const std::shared_ptr<OrderedWorkC10d>& work) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  pending_.push_back(work);
}

void OrderedWorkC10d::Queue::flush(const OrderedWorkC10d* last, std::chrono::milliseconds timeout) {
  std::lock_guard<std::recursive_mutex> lock(mutex_);
  while (!pending_.empty()) {
    auto work = std::move(pending_.front());
    pending_.pop_front();
    work->issue_gather(timeout);
    if (work.get() == last) return;
  }
}

OrderedWorkC10d::OrderedWorkC10d(std::string description, uint64_t sequence, int rank, detail::OrderedSum sum,
                                 at::Tensor pieces, std::shared_ptr<Work> exchange, Gather gather,
                                 std::shared_ptr<Queue> queue)
    : Work(std::move(description), sequence, rank), sum_(std::move(sum)), pieces_(std::move(pieces)),
      exchange_(std::move(exchange)), gather_(std::move(gather)), queue_(std::move(queue)) {
  mark_started();
}

void OrderedWorkC10d::issue_gather(std::chrono::milliseconds timeout) {
  if (gather_work_ || is_completed()) return;
  try {
    exchange_->wait(timeout);
    const at::Tensor mine = sum_.add(pieces_, nullptr);
    sums_ = sum_.gathered(nullptr);
    gather_work_ = gather_(mine, sums_);
  } catch (...) {
    finish(std::current_exception());
    throw;
  }
}

void OrderedWorkC10d::wait(std::chrono::milliseconds timeout) {
  if (!is_completed()) {
    try {
      queue_->flush(this, timeout);
      gather_work_->wait(timeout);
      sum_.unpack(sums_);
      finish();
    } catch (const TimeoutError&) {
      throw; // still pending: the collective may yet complete
    } catch (...) {
      if (!is_completed()) finish(std::current_exception());
    }
  }
  Work::wait(timeout);
}

} // namespace ddp::c10d_adapter
