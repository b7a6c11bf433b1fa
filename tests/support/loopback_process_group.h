// A world-size-1 ddp::ProcessGroup that completes every collective at once, so the
// reducer's single-process behaviour can be unit-tested without MPI. It also counts
// what it was asked to do.
#pragma once

#include <ddp/process_group.h>

namespace ddp::test {

class LoopbackProcessGroup : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "loopback"; }
  std::shared_ptr<Work> allreduce(at::Tensor) override { ++allreduces; return done("allreduce"); }
  std::shared_ptr<Work> broadcast(at::Tensor, int) override { ++broadcasts; return done("broadcast"); }
  std::shared_ptr<Work> allgather(std::vector<at::Tensor> outputs, at::Tensor input) override {
    outputs.at(0).copy_(input);
    ++allgathers;
    return done("allgather");
  }
  void barrier() override {}

  int allreduces = 0;
  int broadcasts = 0;
  int allgathers = 0;

 private:
  std::shared_ptr<Work> done(const char* what) {
    auto work = std::make_shared<Work>(what, ++sequence_, 0);
    work->mark_started();
    work->finish();
    return work;
  }
  uint64_t sequence_ = 0;
};

} // namespace ddp::test
