// FNV-1a, 64 bit: a hash that is the same in every process (std::hash need not be), for
// values the ranks compare or derive alike (consistency checks, PowerSGD's seeds).
#pragma once

#include <cstdint>
#include <string>

namespace ddp::detail {

constexpr uint64_t kFnv1aOffset = 1469598103934665603ull;

inline uint64_t fnv1a(const std::string& s, uint64_t h = kFnv1aOffset) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

} // namespace ddp::detail
