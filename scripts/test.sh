#!/usr/bin/env bash
# The whole test suite on a fresh machine: install what is missing, build, run ctest
# (unit tests, multi-process tests under mpirun -np 2 and -np 3, the installed-package
# consumer, the benchmark smoke tests; gpu tests report Skipped without a GPU).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
# mpirun refuses to run as root without these; harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd "${BUILD_DIR:-$root/build}"
ctest --output-on-failure --timeout 900 "$@"
