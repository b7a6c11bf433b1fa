// The ProcessGroup conformance tests (tests/support/process_group_conformance.h) on PyTorch's
// gloo through libddp's c10d adapter. Run under torchrun (ctest label `gloo`), where the
// environment names the store; each case creates a fresh gloo group on it, as a trainer's
// init_process_group does.
#include <ddp/config.h>

#include "process_group_conformance.h"
#include "world.h"

#if DDP_HAVE_GLOO
namespace {
std::shared_ptr<ddp::ProcessGroup> make_gloo_group() {
  return ddp::init_process_group(ddp::InitOptions().backend("gloo").timeout(std::chrono::seconds(60)));
}
} // namespace

DDP_PROCESS_GROUP_CONFORMANCE("[gloo]", make_gloo_group, at::TensorOptions().device(at::kCPU))

TEST_CASE("the gloo backend names what it cannot take, with the rank", "[gloo][pg]") {
  auto pg = make_gloo_group();
  CHECK(pg->backend() == "gloo");
  CHECK(ddp::get_rank() == pg->rank());
  CHECK(ddp::get_world_size() == pg->size());
  CHECK_THROWS_WITH(pg->allreduce(at::zeros({4, 4}).t()), Catch::Contains("contiguous") && Catch::Contains("rank"));
  CHECK_THROWS_WITH(pg->broadcast(at::zeros({2}), pg->size()), Catch::Contains("root"));
}

TEST_CASE("a gloo collective that another rank never issues is a TimeoutError naming it", "[gloo][timeout]") {
  auto pg = make_gloo_group();
  at::Tensor t = at::ones({8});
  if (pg->rank() == 0) {
    auto work = pg->allreduce(t);
    CHECK_THROWS_AS(work->wait(std::chrono::milliseconds(300)), ddp::TimeoutError);
    CHECK_THROWS_WITH(work->wait(std::chrono::milliseconds(1)), Catch::Contains("allreduce") &&
                                                                     Catch::Contains("[ddp rank 0]"));
    CHECK(work->timed_out());
  }
  // The others join late, so the job still ends cleanly.
  ddp::test::world().barrier();
  if (pg->rank() != 0) pg->allreduce(t)->wait(std::chrono::seconds(60));
  pg->barrier();
}
#endif
