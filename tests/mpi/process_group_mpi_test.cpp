#include "process_group_conformance.h"
#include "world.h"

namespace {
std::shared_ptr<ddp::ProcessGroup> make_mpi_group() {
  return ddp::init_process_group("mpi");
}
} // namespace

DDP_PROCESS_GROUP_CONFORMANCE("[mpi]", make_mpi_group, at::TensorOptions().device(at::kCPU))

TEST_CASE("the MPI backend rejects tensors it cannot send, with the fix", "[mpi][pg]") {
  auto pg = ddp::test::world_ptr();
  at::Tensor strided = at::zeros({4, 4}).t();
  CHECK_THROWS_AS(pg->allreduce(strided), ddp::InvalidArgumentError);
  CHECK_THROWS_WITH(pg->allreduce(strided), Catch::Contains("contiguous") && Catch::Contains("rank"));
  CHECK_THROWS_WITH(pg->allreduce(at::zeros({2}, at::kComplexFloat)), Catch::Contains("ComplexFloat"));
  CHECK_THROWS_WITH(pg->broadcast(at::zeros({2}), pg->size()), Catch::Contains("root"));
  CHECK_THROWS_WITH(ddp::init_process_group("carrier-pigeon"),
                    Catch::Contains("unknown backend \"carrier-pigeon\"") && Catch::Contains("mpi") &&
                        Catch::Contains("gloo"));
}

TEST_CASE("a collective that another rank never issues times out with a clear error", "[mpi][timeout]") {
  auto pg = ddp::init_process_group("mpi");
  at::Tensor t = at::ones({8});
  if (pg->rank() == 0) {
    auto work = pg->allreduce(t);
    // The other ranks join only after rank 0 gave up waiting: a late rank, not a dead one,
    // so the job can still finish cleanly.
    CHECK_THROWS_AS(work->wait(std::chrono::milliseconds(300)), ddp::TimeoutError);
    CHECK_THROWS_WITH(work->wait(std::chrono::milliseconds(1)),
                      Catch::Contains("rank 0") && Catch::Contains("allreduce") &&
                          Catch::Contains("did not complete within 1 ms"));
    at::Tensor go = at::ones({1});
    pg->broadcast(go, 0); // releases the others
    work->wait(std::chrono::seconds(60));
    CHECK(t[0].item<float>() == pg->size());
  } else {
    at::Tensor go = at::zeros({1});
    // Same collectives in the same order as rank 0, only 800 ms late.
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    auto work = pg->allreduce(t);
    pg->broadcast(go, 0)->wait(std::chrono::seconds(60));
    work->wait(std::chrono::seconds(60));
    CHECK(t[0].item<float>() == pg->size());
  }
}
