// Invariant checks inside libddp (the second tier of errors, see docs/errors.md).
// A failing check is a libddp bug: it throws ddp::InternalError with both operands,
// file:line and the rank, so a report carries what is needed to find it.
#pragma once

#include <fmt/format.h>

#include <ddp/error.h>

namespace ddp::detail {

// The rank of this process in the world, or -1 before any process group exists.
int world_rank();
void set_world_rank(int rank);

[[noreturn]] void throw_check_failure(const char* file, int line, const std::string& what);

} // namespace ddp::detail

#define DDP_CHECK(cond, ...)                                                                   \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      ::ddp::detail::throw_check_failure(__FILE__, __LINE__,                                   \
                                         fmt::format("check failed: {}. {}", #cond,            \
                                                     fmt::format(__VA_ARGS__)));               \
    }                                                                                          \
  } while (0)

#define DDP_CHECK_OP_(a, b, op)                                                                \
  do {                                                                                         \
    const auto& ddp_a_ = (a);                                                                  \
    const auto& ddp_b_ = (b);                                                                  \
    if (!(ddp_a_ op ddp_b_)) {                                                                 \
      ::ddp::detail::throw_check_failure(                                                      \
          __FILE__, __LINE__,                                                                  \
          fmt::format("check failed: {} {} {} ({} vs {})", #a, #op, #b, ddp_a_, ddp_b_));      \
    }                                                                                          \
  } while (0)

#define DDP_CHECK_EQ(a, b) DDP_CHECK_OP_(a, b, ==)
#define DDP_CHECK_NE(a, b) DDP_CHECK_OP_(a, b, !=)
#define DDP_CHECK_LT(a, b) DDP_CHECK_OP_(a, b, <)
#define DDP_CHECK_LE(a, b) DDP_CHECK_OP_(a, b, <=)
#define DDP_CHECK_GE(a, b) DDP_CHECK_OP_(a, b, >=)
