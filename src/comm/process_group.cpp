// ddp::ProcessGroup's one non-abstract collective: the fallback allreduce_ordered for
// groups that do not run the owner-sums exchange themselves.
#include <ddp/process_group.h>

#include <ATen/ATen.h>

#include "comm/collective_description.h"
#include "comm/ordered_sum.h"

namespace ddp {

std::shared_ptr<Work> ProcessGroup::allreduce_ordered(at::Tensor tensor, OrderedReduce how) {
  const detail::OrderedSum sum(tensor, size(), rank(), how);
  auto work = std::make_shared<Work>(detail::describe_collective("ordered allreduce (allgather)", tensor), 0, rank());
  work->mark_started();
  // Every rank gets every rank's whole tensor and adds them all, in rank order.
  const at::Tensor mine = tensor.reshape({-1}).to(how.wire, /*non_blocking=*/false, /*copy=*/true);
  at::Tensor all = at::empty({size(), mine.numel()}, mine.options());
  std::vector<at::Tensor> outputs;
  for (int r = 0; r < size(); ++r) outputs.push_back(all[r]);
  allgather(outputs, mine)->wait(timeout());
  tensor.view({-1}).copy_(sum.add(all, nullptr));
  work->finish();
  return work;
}

} // namespace ddp
