#!/usr/bin/env bash
# Configures and builds libddp, its tests, the benchmark and the examples in build/
# (BUILD_DIR overrides). Extra arguments go to CMake's configure step. With the virtual
# environment of scripts/setup.sh (scripts/venv.sh), CMake uses its python, which finds
# LibTorch and runs the Python tests; without one, the python3 on PATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
source "$root/scripts/venv.sh"
ddp_use_venv
# ccache hits across clones in other folders (CI builds a fresh clone).
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$root} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "${DDP_CMAKE_PYTHON[@]}" "$@"
cmake --build "$build" -j "${JOBS:-2}"
