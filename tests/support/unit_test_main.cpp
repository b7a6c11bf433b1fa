// Catch2's main for the single-process tests (compiled without the precompiled header,
// which must not carry Catch's implementation).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
