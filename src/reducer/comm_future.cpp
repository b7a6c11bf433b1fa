#include <ddp/comm_future.h>

#include <ddp/error.h>

namespace ddp {

std::shared_ptr<CommFuture> CommFuture::ready(at::Tensor value) {
  std::shared_ptr<CommFuture> future(new CommFuture());
  future->value_ = std::move(value);
  return future;
}

std::shared_ptr<CommFuture> CommFuture::of(std::shared_ptr<Work> work, at::Tensor value) {
  if (!work) throw InvalidArgumentError("ddp::CommFuture::of: the work is null");
  std::shared_ptr<CommFuture> future(new CommFuture());
  future->work_ = std::move(work);
  future->value_ = std::move(value);
  return future;
}

std::shared_ptr<CommFuture> CommFuture::then(Continuation next) {
  if (!next) throw InvalidArgumentError("ddp::CommFuture::then: the continuation is empty");
  std::shared_ptr<CommFuture> future(new CommFuture());
  // A chain holds its parents, not the other way round: no cycle.
  future->parent_ = shared_from_this();
  future->next_ = std::move(next);
  return future;
}

std::shared_ptr<CommFuture> CommFuture::then_map(Map map) {
  if (!map) throw InvalidArgumentError("ddp::CommFuture::then_map: the function is empty");
  return then([map = std::move(map)](const at::Tensor& value) { return ready(map(value)); });
}

void CommFuture::advance(std::chrono::milliseconds timeout) {
  advance_one(timeout);
}

bool CommFuture::advance_one(std::chrono::milliseconds timeout) {
  if (error_) std::rethrow_exception(error_);
  if (result_) return result_->advance_one(timeout);
  if (!parent_) return false; // a leaf: nothing to run
  try {
    // The earliest continuation not yet run, and only that one: a collective it issues
    // is not waited for here.
    if (parent_->advance_one(timeout)) return true;
    const at::Tensor input = parent_->wait(timeout);
    result_ = next_(input);
    if (!result_) throw InvalidArgumentError("a CommFuture continuation returned a null future");
  } catch (...) {
    // Failed for good: waiting again rethrows, and never runs the continuation (and its
    // collectives) a second time.
    error_ = std::current_exception();
    result_.reset();
    parent_.reset();
    next_ = nullptr;
    throw;
  }
  parent_.reset(); // its value is consumed: free it
  next_ = nullptr;
  return true;
}

at::Tensor CommFuture::wait(std::chrono::milliseconds timeout) {
  if (error_) std::rethrow_exception(error_);
  if (parent_ || result_) {
    while (!result_) advance_one(timeout);
    return result_->wait(timeout);
  }
  if (work_) work_->wait(timeout);
  return value_;
}

} // namespace ddp
