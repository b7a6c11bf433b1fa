#include "common/check.h"

#include <unistd.h>

#include <atomic>

namespace ddp::detail {
namespace {
std::atomic<int> g_world_rank{-1};
} // namespace

int world_rank() {
  return g_world_rank.load(std::memory_order_relaxed);
}

void set_world_rank(int rank) {
  g_world_rank.store(rank, std::memory_order_relaxed);
}

void throw_check_failure(const char* file, int line, const std::string& what) {
  throw InternalError(fmt::format("[ddp rank {} pid {}] internal error at {}:{}: {}. This is a libddp bug; "
                                  "please report it with this message.",
                                  world_rank(), static_cast<long>(::getpid()), file, line, what));
}

} // namespace ddp::detail
