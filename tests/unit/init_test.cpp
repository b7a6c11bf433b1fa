// init_process_group(InitOptions) and the default group: options set in code, the errors
// for bad ones, and (where gloo is built) two gloo ranks as threads of this process meeting
// on a TCPStore at a free port, with no launcher. Expected sums are closed-form.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <chrono>
#include <future>
#include <string>
#include <vector>

#include <ddp/ddp.h>

using Catch::Contains;

#include "free_port.h"

using ddp::test::free_port;

namespace {

std::string error_of(const ddp::InitOptions& options) {
  try {
    ddp::init_process_group(options);
  } catch (const ddp::InvalidArgumentError& e) {
    return e.what();
  }
  return "no error";
}

} // namespace

TEST_CASE("InitOptions: chained setters and their defaults", "[init]") {
  const ddp::InitOptions defaults;
  CHECK(defaults.backend() == "auto");
  CHECK(defaults.init_method().empty());
  CHECK(defaults.rank() == -1);
  CHECK(defaults.world_size() == -1);
  CHECK(defaults.timeout() == ddp::kDefaultTimeout);
  CHECK(defaults.group_name().empty());
  CHECK_FALSE(defaults.device().has_value());
  const auto set = ddp::InitOptions().backend("gloo").rank(1).world_size(4).group_name("g").timeout(
      std::chrono::seconds(7));
  CHECK(set.backend() == "gloo");
  CHECK(set.rank() == 1);
  CHECK(set.world_size() == 4);
  CHECK(set.group_name() == "g");
  CHECK(set.timeout() == std::chrono::seconds(7));
}

TEST_CASE("init_process_group names a bad option or backend, and the default group needs one", "[init]") {
  CHECK_THAT(error_of(ddp::InitOptions().rank(-5)), Contains("rank = -5") && Contains("world_size"));
  CHECK_THAT(error_of(ddp::InitOptions().world_size(0)), Contains("world_size = 0"));
  CHECK_THAT(error_of(ddp::InitOptions().backend("carrier-pigeon")),
             Contains("unknown backend \"carrier-pigeon\"") && Contains("gloo") && Contains("this build has"));
  CHECK_THAT(error_of(ddp::InitOptions().backend("gloo").init_method("tcp://nohostport").rank(0).world_size(2)),
             Contains("tcp://HOST:PORT"));
  ddp::destroy_process_group();
  CHECK_THROWS_WITH(ddp::get_rank(), Contains("no default process group") && Contains("init_process_group"));
  CHECK_THROWS_AS(ddp::get_world_size(), ddp::InvalidArgumentError);
}

#if DDP_HAVE_GLOO
TEST_CASE("gloo ranks as threads meet through InitOptions alone and become the default group", "[init][gloo]") {
  const int world = 2;
  const std::string address = "tcp://127.0.0.1:" + std::to_string(free_port());
  struct Seen {
    std::string error, backend;
    int rank = -1, size = 0;
    std::vector<double> sums;
  };
  std::vector<std::future<Seen>> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.push_back(std::async(std::launch::async, [&, r] {
      Seen seen;
      try {
        auto pg = ddp::init_process_group(ddp::InitOptions().backend("gloo").init_method(address).rank(r)
                                              .world_size(world).group_name("init_test")
                                              .timeout(std::chrono::seconds(30)));
        seen.backend = pg->backend();
        seen.rank = pg->rank();
        seen.size = pg->size();
        for (int i = 0; i < 3; ++i) {
          at::Tensor t = at::full({5}, double(r + 1 + i), at::kDouble);
          pg->allreduce(t)->wait(std::chrono::seconds(30));
          seen.sums.push_back(t[4].item<double>());
        }
        pg->barrier();
      } catch (const std::exception& e) {
        seen.error = e.what();
      }
      return seen;
    }));
  }
  for (int r = 0; r < world; ++r) {
    const Seen seen = ranks[r].get();
    INFO("rank " << r << ": " << seen.error);
    REQUIRE(seen.error.empty());
    CHECK(seen.backend == "gloo");
    CHECK(seen.rank == r);
    CHECK(seen.size == world);
    // sum over r of (r + 1 + i) = 3 + 2i at world 2.
    CHECK(seen.sums == std::vector<double>{3, 5, 7});
  }
  // The last of the threads' groups is the default group; either way it has two ranks.
  CHECK(ddp::get_world_size() == world);
  ddp::destroy_process_group();
  CHECK_THROWS_AS(ddp::get_rank(), ddp::InvalidArgumentError);
}

TEST_CASE("a gloo rank whose peer never comes is told which rank is missing", "[init][gloo]") {
  const std::string address = "tcp://127.0.0.1:" + std::to_string(free_port());
  CHECK_THROWS_WITH(ddp::init_process_group(ddp::InitOptions().backend("gloo").init_method(address).rank(0)
                                                .world_size(2).timeout(std::chrono::milliseconds(500))),
                    Contains("[ddp rank 0]") && Contains("missing ranks: 1") && Contains("WORLD_SIZE=2"));
}
#endif

#if DDP_HAVE_C10D_NCCL
// In a build with c10d-nccl (-DDDP_WITH_C10D_NCCL=ON) on a machine without a GPU, asking for
// PyTorch's NCCL group is a user error with its cause, never a crash inside c10d. With a
// GPU, the gpu tests (DDP_TEST_BACKEND=c10d-nccl) create the group instead.
TEST_CASE("c10d-nccl without a CUDA device names the cause", "[init][c10d-nccl]") {
  if (torch::cuda::device_count() > 0) {
    SUCCEED("a CUDA device is visible: the gpu tests cover c10d-nccl (ctest -L gpu)");
    return;
  }
  CHECK_THAT(error_of(ddp::InitOptions().backend("c10d-nccl")),
             Contains("[ddp rank 0]") && Contains("c10d-nccl backend (PyTorch's ProcessGroupNCCL) needs a CUDA device") &&
                 Contains("none is visible") && Contains("CUDA_VISIBLE_DEVICES="));
  CHECK_THAT(error_of(ddp::InitOptions().backend("c10d-nccl").device(torch::Device(torch::kCUDA, 0))),
             Contains("needs a CUDA device, but none is visible"));
}
#endif
