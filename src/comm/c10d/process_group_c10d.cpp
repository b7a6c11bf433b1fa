#include "comm/c10d/process_group_c10d.h"

#include <fmt/format.h>

#include <ddp/error.h>

#include "comm/argument_checks.h"
#include "comm/c10d/ordered_work_c10d.h"
#include "comm/c10d/work_c10d.h"
#include "comm/collective_description.h"
#include "common/timeouts.h"

namespace ddp::c10d_adapter {
namespace {

std::string name_of(const std::string& c10d_name) { return c10d_name == "gloo" ? "gloo" : "c10d:" + c10d_name; }

} // namespace

template <typename Group>
ProcessGroupC10d<Group>::ProcessGroupC10d(c10::intrusive_ptr<Group> group, c10::Device device)
    : group_(std::move(group)), device_(device), rank_(group_ ? group_->getRank() : -1),
      size_(group_ ? group_->getSize() : 0), backend_(group_ ? name_of(group_->getBackendName()) : "") {
  if (!group_) throw InvalidArgumentError("[ddp rank ?] ddp::from_c10d: the c10d process group is null");
}

template <typename Group>
void ProcessGroupC10d<Group>::check_usable() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!aborted_.empty()) {
    throw CommError(fmt::format("[ddp rank {}] the {} process group was aborted: {}", rank_, backend_, aborted_));
  }
}

template <typename Group>
void ProcessGroupC10d<Group>::check_tensor(const at::Tensor& tensor, const char* op) const {
  detail::check_tensor(rank_, op, tensor, [&] {
    if (tensor.device().type() != device_.type()) {
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] {} on the {} process group got a tensor on {}; this group takes tensors on {}. Move the "
          "tensor there first, or create the group for that device.",
          rank_, op, backend_, tensor.device().str(), device_.str()));
    }
  });
}

template <typename Group>
template <typename Issue>
std::shared_ptr<Work> ProcessGroupC10d<Group>::run(const char* op, const at::Tensor& tensor, Issue&& issue_fn) {
  check_usable();
  ordered_->flush(nullptr, timeout());
  return issue(detail::describe_collective(op, tensor), std::forward<Issue>(issue_fn));
}

template <typename Group>
template <typename Issue>
std::shared_ptr<Work> ProcessGroupC10d<Group>::issue(const std::string& description, Issue&& issue_fn) {
  const uint64_t sequence = ++sequence_;
  c10::intrusive_ptr<c10d::Work> work;
  try {
    work = issue_fn();
  } catch (const std::exception& e) {
    throw CommError(fmt::format("[ddp rank {}] collective #{} ({}) could not be issued on the c10d {} process "
                                "group: {}",
                                rank_, sequence, description, backend_, e.what()));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  auto started = WorkC10d::start(std::move(work), description, sequence, rank_, backend_, device_.is_cuda(), last_);
  last_ = started;
  return started;
}

template <typename Group>
std::shared_ptr<Work> ProcessGroupC10d<Group>::allreduce(at::Tensor tensor) {
  check_tensor(tensor, "allreduce");
  return run("allreduce", tensor, [&] {
    std::vector<at::Tensor> tensors{tensor};
    return group_->allreduce(tensors, c10d::AllreduceOptions());
  });
}

template <typename Group>
std::shared_ptr<Work> ProcessGroupC10d<Group>::broadcast(at::Tensor tensor, int root) {
  check_tensor(tensor, "broadcast");
  detail::check_root(rank_, size_, root);
  return run("broadcast", tensor, [&] {
    std::vector<at::Tensor> tensors{tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    return group_->broadcast(tensors, options);
  });
}

template <typename Group>
std::shared_ptr<Work> ProcessGroupC10d<Group>::allgather(std::vector<at::Tensor> outputs, at::Tensor input) {
  detail::check_allgather(rank_, size_, outputs, input, [this](const at::Tensor& t) { check_tensor(t, "allgather"); });
  return run("allgather", input, [&] {
    std::vector<std::vector<at::Tensor>> output_lists{outputs};
    std::vector<at::Tensor> inputs{input};
    return group_->allgather(output_lists, inputs, c10d::AllgatherOptions());
  });
}

template <typename Group>
std::shared_ptr<Work> ProcessGroupC10d<Group>::allreduce_ordered(at::Tensor tensor, OrderedReduce how) {
  check_tensor(tensor, "allreduce_ordered");
  detail::OrderedSum sum(tensor, size_, rank_, how);
  // Fresh buffers for each: several ordered all-reduces are in flight at once.
  at::Tensor packed = sum.pack(nullptr);
  at::Tensor pieces = sum.pieces(nullptr);
  const std::string description = detail::describe_collective("ordered allreduce", tensor);
  auto exchange = run("ordered allreduce (all-to-all)", tensor, [&] {
    std::vector<int64_t> equal_splits; // empty: equal rows
    return group_->alltoall_base(pieces, packed, equal_splits, equal_splits, c10d::AllToAllOptions());
  });
  // Issued through this adapter (its sequence and issue order) by the flush, which runs
  // before this group's next collective or at the wait: while the group is in use.
  auto gather = [this, c10d_group = group_](at::Tensor mine, at::Tensor sums) {
    return issue("ordered allreduce (allgather)", [&] {
      std::vector<at::Tensor> rows;
      for (int64_t r = 0; r < sums.size(0); ++r) rows.push_back(sums[r]);
      std::vector<std::vector<at::Tensor>> output_lists{rows};
      std::vector<at::Tensor> inputs{mine};
      return c10d_group->allgather(output_lists, inputs, c10d::AllgatherOptions());
    });
  };
  auto work = std::make_shared<OrderedWorkC10d>(description, ++sequence_, rank_, std::move(sum), std::move(pieces),
                                                std::move(exchange), std::move(gather), ordered_);
  ordered_->push(work);
  return work;
}

template <typename Group>
void ProcessGroupC10d<Group>::barrier() {
  check_usable();
  ordered_->flush(nullptr, timeout());
  c10d::BarrierOptions options;
  if (!detail::is_unbounded(timeout())) options.timeout = timeout();
  const uint64_t sequence = ++sequence_;
  c10::intrusive_ptr<c10d::Work> work;
  try {
    work = group_->barrier(options);
  } catch (const std::exception& e) {
    throw CommError(fmt::format("[ddp rank {}] barrier on the c10d {} process group failed: {}", rank_, backend_,
                                e.what()));
  }
  std::shared_ptr<Work> started;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    started = WorkC10d::start(std::move(work), "barrier", sequence, rank_, backend_, device_.is_cuda(), last_);
    last_ = started;
  }
  started->wait(timeout());
}

template <typename Group>
void ProcessGroupC10d<Group>::abort(const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!aborted_.empty()) return;
    aborted_ = reason;
  }
  try {
    group_->abort();
  } catch (const std::exception&) {
    // Aborting is best effort: the group is unusable either way.
  }
}

template class ProcessGroupC10d<c10d::ProcessGroup>;
template class ProcessGroupC10d<c10d::Backend>;

} // namespace ddp::c10d_adapter
