#include "world.h"

#include <limits>
#include <stdexcept>
#include <string>

namespace ddp::test {
namespace {
std::shared_ptr<ProcessGroup>& world_slot() {
  static std::shared_ptr<ProcessGroup> pg;
  return pg;
}
at::Device& device_slot() {
  static at::Device device = at::kCPU;
  return device;
}
// A rank thread's own group (ThreadWorldScope); null on every other thread.
std::shared_ptr<ProcessGroup>& thread_world_slot() {
  thread_local std::shared_ptr<ProcessGroup> pg;
  return pg;
}
} // namespace

std::shared_ptr<ProcessGroup> world_ptr() {
  if (auto& own = thread_world_slot()) return own;
  if (!world_slot()) throw std::runtime_error("the test main did not create the world process group");
  return world_slot();
}

ThreadWorldScope::ThreadWorldScope(std::shared_ptr<ProcessGroup> pg) : previous_(std::move(thread_world_slot())) {
  thread_world_slot() = std::move(pg);
}

ThreadWorldScope::~ThreadWorldScope() { thread_world_slot() = std::move(previous_); }

void set_world(std::shared_ptr<ProcessGroup> pg, at::Device device) {
  world_slot() = std::move(pg);
  device_slot() = device;
}

at::Device world_device() { return thread_world_slot() ? at::Device(at::kCPU) : device_slot(); }

bool identical_across_ranks(const at::Tensor& tensor) {
  ProcessGroup& pg = world();
  at::Tensor mine = tensor.detach().cpu().contiguous().reshape({-1});
  at::Tensor bytes = mine.view(at::kByte).to(world_device());
  std::vector<at::Tensor> all;
  for (int r = 0; r < pg.size(); ++r) all.push_back(at::empty_like(bytes));
  pg.allgather(all, bytes)->wait(std::chrono::seconds(60));
  bool same = true;
  for (const auto& other : all) same = same && at::equal(other.cpu(), all[0].cpu());
  return same;
}

double max_relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  at::Tensor a = actual.detach().to(at::kDouble).cpu();
  at::Tensor e = expected.detach().to(at::kDouble).cpu();
  const double scale = std::max(e.abs().max().item<double>(), 1e-30);
  return (a - e).abs().max().item<double>() / scale;
}

double unit_roundoff(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return std::numeric_limits<float>::epsilon() / 2.0;
    case at::kDouble:
      return std::numeric_limits<double>::epsilon() / 2.0;
    case at::kHalf:
      return static_cast<double>(std::numeric_limits<c10::Half>::epsilon()) / 2.0;
    case at::kBFloat16:
      return static_cast<double>(std::numeric_limits<c10::BFloat16>::epsilon()) / 2.0;
    default:
      throw std::invalid_argument(std::string("unit_roundoff: not a floating dtype: ") + c10::toString(dtype));
  }
}

double reduction_tolerance(at::ScalarType dtype, int64_t terms) {
  if (terms < 1) throw std::invalid_argument("reduction_tolerance: terms must be >= 1");
  const double nu = static_cast<double>(terms) * unit_roundoff(dtype);
  const double tolerance = nu < 1.0 ? 2.0 * nu / (1.0 - nu) : 1.0;
  if (tolerance >= 1.0) {
    throw std::invalid_argument("reduction_tolerance: " + std::to_string(terms) + " terms in " +
                                c10::toString(dtype) + " give a bound >= 1, which checks nothing");
  }
  return tolerance;
}

at::ScalarType least_precise_dtype(const std::vector<at::Tensor>& tensors) {
  at::ScalarType worst = at::kDouble;
  for (const auto& t : tensors) {
    if (at::isFloatingType(t.scalar_type()) && unit_roundoff(t.scalar_type()) > unit_roundoff(worst)) {
      worst = t.scalar_type();
    }
  }
  return worst;
}

int64_t sum_over_ranks(int64_t value) {
  at::Tensor t = at::full({1}, value, at::TensorOptions().dtype(at::kLong).device(world_device()));
  world().allreduce(t)->wait(std::chrono::seconds(60));
  return t.cpu().item<int64_t>();
}

Options test_options() {
  Options options;
  options.timeout(std::chrono::seconds(60));
  return options;
}

} // namespace ddp::test
