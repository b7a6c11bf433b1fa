#!/usr/bin/env bash
# Configures and builds libddp, its tests, the benchmark and the examples in build/
# (BUILD_DIR overrides). Extra arguments go to CMake's configure step.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build" -j "${JOBS:-2}"
