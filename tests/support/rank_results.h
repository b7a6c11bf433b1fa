// Catch2 checks of what run_ranks (thread_ranks.h) hands back, on the main thread.
#pragma once

#include <catch2/catch.hpp>

namespace ddp::test {

// Every rank's body returned (no exception escaped it); stops the test case otherwise,
// naming the rank and its error.
template <class Results>
void require_values(const Results& results) {
  for (const auto& r : results) {
    INFO("rank " << r.rank << " threw " << r.error_type << ": " << r.error);
    REQUIRE(r.ok());
  }
}

} // namespace ddp::test
