// The NCCL backend's own behaviour on CUDA tensors: the stream and allocator ordering
// that lets collectives run without host synchronisation, large messages, refused
// tensors, and the timeout/abort path. The collectives' results are checked by the
// shared conformance tests (process_group_nccl_test.cpp). Written for any world size:
// world 1 when started plainly, world N under torchrun or mpirun.
#include <catch2/catch.hpp>

#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/torch.h>

#include <chrono>
#include <thread>

#include <ddp/error.h>
#include <ddp/init.h>

#include "comm/nccl/process_group_nccl.h"
#include "world.h"

namespace {

// The NCCL world the test main created.
std::shared_ptr<ddp::ProcessGroup> gpu_process_group() {
  return ddp::test::world_ptr();
}

c10::Device bound_device(const ddp::ProcessGroup& group) {
  auto* nccl = dynamic_cast<const ddp::nccl::ProcessGroupNCCL*>(&group);
  REQUIRE(nccl != nullptr);
  return nccl->device();
}

// GPU clock cycles that keep a stream busy for roughly `ms` milliseconds (at >= 1 GHz).
int64_t cycles_for_ms(int ms) {
  return static_cast<int64_t>(ms) * 2'000'000;
}

} // namespace

TEST_CASE("nccl: the group is bound to one CUDA device and reports itself", "[gpu][nccl]") {
  auto group = gpu_process_group();
  REQUIRE(group->backend() == "nccl");
  REQUIRE(group->size() >= 1);
  REQUIRE(group->rank() >= 0);
  REQUIRE(group->rank() < group->size());
  REQUIRE(bound_device(*group).is_cuda());
  group->barrier();
}

TEST_CASE("nccl: a large allreduce and a host wait with a timeout", "[gpu][nccl]") {
  auto group = gpu_process_group();
  const auto device = bound_device(*group);
  auto tensor = torch::full({64 << 20}, 1.0f, torch::TensorOptions().device(device));  // 256 MiB
  auto work = group->allreduce(tensor);
  work->wait(std::chrono::seconds(60));
  REQUIRE(work->is_completed());
  REQUIRE(work->end_time() >= work->start_time());
  REQUIRE(torch::all(tensor == static_cast<float>(group->size())).item<bool>());
}

TEST_CASE("nccl: the collective waits for the producing stream, the consumer for the collective",
          "[gpu][nccl][streams]") {
  auto group = gpu_process_group();
  const auto device = bound_device(*group);
  // A side stream, as the autograd engine uses for backward: the input is written there
  // only after a long sleep. Without the event wait, the communication stream would read
  // the -1s; without wait()'s event, the consumer would copy the output before it is written.
  auto producer = c10::cuda::getStreamFromPool(false, device.index());
  c10::cuda::CUDAStreamGuard on_producer(producer);
  auto input = torch::full({1 << 20}, -1.0f, torch::TensorOptions().device(device));
  std::vector<torch::Tensor> outputs;
  for (int r = 0; r < group->size(); ++r) outputs.push_back(torch::zeros_like(input));
  at::cuda::sleep(cycles_for_ms(100));
  input.fill_(static_cast<float>(group->rank() + 7));

  auto work = group->allgather(outputs, input);
  work->wait();  // no host synchronisation: orders `producer` after the collective
  auto consumed = torch::stack(outputs).sum(1);  // queued on `producer`
  auto expected = (torch::arange(group->size(), torch::kFloat) + 7) * static_cast<float>(1 << 20);
  REQUIRE(torch::equal(consumed.cpu(), expected));
}

TEST_CASE("nccl: memory used by a queued collective is not reused when the caller frees it",
          "[gpu][nccl][streams]") {
  auto group = gpu_process_group();
  const auto device = bound_device(*group);
  auto* nccl = dynamic_cast<ddp::nccl::ProcessGroupNCCL*>(group.get());
  REQUIRE(nccl != nullptr);
  const int64_t n = 1 << 22;
  std::vector<torch::Tensor> outputs;
  for (int r = 0; r < group->size(); ++r) outputs.push_back(torch::zeros({n}, torch::TensorOptions().device(device)));
  std::shared_ptr<ddp::Work> work;
  {
    // Hold the communication stream back so the collective is still queued when the
    // input is freed and its block is requested again on the caller's stream.
    c10::cuda::CUDAStreamGuard on_comm(nccl->comm_stream());
    at::cuda::sleep(cycles_for_ms(100));
  }
  {
    auto input = torch::full({n}, 5.0f, torch::TensorOptions().device(device));
    work = group->allgather(outputs, input);
  }  // `input` freed while the collective waits behind the sleep
  auto reuse = torch::full({n}, 999.0f, torch::TensorOptions().device(device));
  work->wait(std::chrono::seconds(60));
  for (const auto& out : outputs) REQUIRE(torch::all(out.cpu() == 5.0f).item<bool>());
  REQUIRE(torch::all(reuse.cpu() == 999.0f).item<bool>());
}

TEST_CASE("nccl: tensors the backend cannot take are refused with the reason", "[gpu][nccl][errors]") {
  auto group = gpu_process_group();
  const auto device = bound_device(*group);
  REQUIRE_THROWS_AS(group->allreduce(torch::ones({4})), ddp::InvalidArgumentError);
  REQUIRE_THROWS_WITH(group->allreduce(torch::ones({4})), Catch::Contains("CUDA tensors") && Catch::Contains("[ddp rank"));
  auto strided = torch::ones({4, 4}, torch::TensorOptions().device(device)).t();
  REQUIRE_THROWS_WITH(group->allreduce(strided), Catch::Contains("contiguous"));
  REQUIRE_THROWS_AS(group->broadcast(torch::ones({4}, torch::TensorOptions().device(device)), group->size()),
                    ddp::InvalidArgumentError);
  REQUIRE_THROWS_AS(group->allreduce(torch::ones({4}, torch::TensorOptions().dtype(torch::kComplexFloat).device(device))),
                    ddp::InvalidArgumentError);
}

// Tagged [abort] and run as its own ctest process (see CMakeLists.txt): should aborting
// a communicator with work still queued upset the CUDA context, no other test suffers.
TEST_CASE("nccl: a collective that does not finish in time aborts the communicator", "[gpu][nccl][abort]") {
  if (gpu_process_group()->size() != 1) {
    WARN("SKIPPED: the timeout test stalls one rank's stream and runs only in a world of 1");
    return;
  }
  // Its own group: this test aborts it.
  auto group = ddp::init_process_group("nccl", c10::Device(c10::kCUDA));
  const auto device = bound_device(*group);
  auto* nccl = dynamic_cast<ddp::nccl::ProcessGroupNCCL*>(group.get());
  auto tensor = torch::ones({16}, torch::TensorOptions().device(device));
  {
    c10::cuda::CUDAStreamGuard on_comm(nccl->comm_stream());
    at::cuda::sleep(cycles_for_ms(300));
  }
  auto work = group->allreduce(tensor);
  REQUIRE_FALSE(work->is_completed());
  try {
    work->wait(std::chrono::milliseconds(20));
    FAIL("wait did not time out");
  } catch (const ddp::TimeoutError& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Catch::Contains("[ddp rank 0]") && Catch::Contains("allreduce") &&
                         Catch::Contains("aborted") && Catch::Contains("within 20 ms"));
  }
  REQUIRE(work->is_completed());
  REQUIRE_THROWS_AS(group->allreduce(tensor), ddp::CommError);
  // The device itself stays usable.
  c10::cuda::device_synchronize();
  REQUIRE(torch::ones({4}, torch::TensorOptions().device(device)).sum().item<float>() == 4.0f);
}

// The watchdog owns the deadline of a collective nobody waits for on the host: the
// reducer's stream waits, a user's next synchronisation. Stall the communication stream
// past the group's timeout, wait only on the GPU, and the watchdog must abort the
// communicator and fail the work with a message naming it.
TEST_CASE("nccl: the watchdog fails a collective that outlives the group's timeout", "[gpu][nccl][abort]") {
  if (gpu_process_group()->size() != 1) {
    WARN("SKIPPED: the watchdog test stalls one rank's stream and runs only in a world of 1");
    return;
  }
  auto group = ddp::init_process_group("nccl", c10::Device(c10::kCUDA));
  group->set_timeout(std::chrono::milliseconds(200));
  const auto device = bound_device(*group);
  auto* nccl = dynamic_cast<ddp::nccl::ProcessGroupNCCL*>(group.get());
  auto tensor = torch::ones({16}, torch::TensorOptions().device(device));
  {
    c10::cuda::CUDAStreamGuard on_comm(nccl->comm_stream());
    at::cuda::sleep(cycles_for_ms(3000));
  }
  auto work = group->allreduce(tensor);
  work->wait(); // a stream wait: returns at once, the deadline is the watchdog's
  // Poll for the watchdog's verdict, well before the stall ends on its own (3 s).
  for (int i = 0; i < 2000 && !work->is_completed(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  REQUIRE(work->is_completed());
  try {
    work->wait();
    FAIL("the watchdog did not fail the collective");
  } catch (const ddp::TimeoutError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("watchdog") && Catch::Contains("collective #1") &&
                                          Catch::Contains("within 200 ms"));
  }
  try {
    group->allreduce(tensor);
    FAIL("an aborted group accepted a collective");
  } catch (const ddp::CommError& e) {
    CHECK_THAT(std::string(e.what()), Catch::Contains("aborted") && Catch::Contains("watchdog"));
  }
  c10::cuda::device_synchronize();
  REQUIRE(torch::ones({4}, torch::TensorOptions().device(device)).sum().item<float>() == 4.0f);
}
