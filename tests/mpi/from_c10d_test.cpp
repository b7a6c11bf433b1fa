// ddp::from_c10d on a process group the trainer built itself: a c10d::ProcessGroupGloo on a
// client of the job's TCPStore (torchrun's agent store, or the one rank 0 serves), as a
// trainer that already uses torch.distributed's C++ API does. The conformance cases
// (tests/support/process_group_conformance.h) run on it under torchrun (ctest gloo_np*_pg).
// Compiled with PyTorch's c10d definitions and without the shared precompiled header
// (tests/CMakeLists.txt).
#include <ddp/config.h>

#if DDP_HAVE_GLOO
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <string>

#include <ddp/c10d.h>

#include "process_group_conformance.h"
#include "world.h"

namespace {

std::shared_ptr<ddp::ProcessGroup> make_user_gloo_group() {
  static int groups = 0;
  const char* host = std::getenv("MASTER_ADDR");
  const char* port = std::getenv("MASTER_PORT");
  REQUIRE(host != nullptr);
  REQUIRE(port != nullptr);
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(std::atoi(port));
  options.isServer = false;
  options.waitWorkers = false;
  options.timeout = std::chrono::seconds(60);
  auto store = c10::make_intrusive<c10d::TCPStore>(host, options);
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("from_c10d_test/" + std::to_string(++groups), store);
  auto gloo_options = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(60));
  gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  auto& world = ddp::test::world();
  auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, world.rank(), world.size(), gloo_options);
  return ddp::from_c10d(gloo);
}

} // namespace

DDP_PROCESS_GROUP_CONFORMANCE("[gloo][c10d]", make_user_gloo_group, at::TensorOptions().device(at::kCPU))

TEST_CASE("from_c10d keeps the group's rank and size and names the backend", "[gloo][c10d][pg]") {
  auto pg = make_user_gloo_group();
  CHECK(pg->rank() == ddp::test::world().rank());
  CHECK(pg->size() == ddp::test::world().size());
  CHECK(pg->backend() == "gloo");
  CHECK(pg->device() == c10::Device(c10::kCPU));
  CHECK_THROWS_WITH(ddp::from_c10d(c10::intrusive_ptr<c10d::Backend>()), Catch::Contains("null"));
}
#endif
