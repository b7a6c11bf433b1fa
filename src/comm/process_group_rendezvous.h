// ProcessGroupRendezvous: the rendezvous over a CPU process group that already exists
// (the MPI one, when the job was started by mpirun): rank 0's blob is broadcast as a
// byte tensor. Owns the group for as long as the rendezvous lives.
#pragma once

#include <memory>

#include <ddp/process_group.h>

#include "comm/rendezvous.h"

namespace ddp {

class ProcessGroupRendezvous final : public Rendezvous {
 public:
  // `group` must take CPU tensors; its timeout() bounds each exchange.
  explicit ProcessGroupRendezvous(std::shared_ptr<ProcessGroup> group);

  int rank() const override { return group_->rank(); }
  int world_size() const override { return group_->size(); }
  std::vector<char> exchange(const std::string& key, const std::vector<char>& bytes) override;

 private:
  std::shared_ptr<ProcessGroup> group_;
};

} // namespace ddp
