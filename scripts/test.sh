#!/usr/bin/env bash
# The whole test suite on a fresh machine: install what is missing, build, run ctest
# (unit tests, multi-process tests under mpirun -np 2 and -np 3, the installed-package
# consumer, the benchmark smoke tests; gpu tests report Skipped without a GPU).
#
#   scripts/test.sh [ctest args]             the normal suite, in build/ (BUILD_DIR)
#   scripts/test.sh --sanitize [ctest args]  ASan + UBSan: libddp and the tests built with
#                                            -fsanitize=address,undefined in build-sanitize/
#                                            (SANITIZE_BUILD_DIR); runs ctest -L 'unit|mpi'
#   scripts/test.sh --tsan [ctest args]      TSan: the same with -fsanitize=thread in
#                                            build-tsan/ (TSAN_BUILD_DIR), ctest -L 'unit|mpi'
# CI (.ci/run) runs the first two. docs/sanitizers.md explains the options below.
# Extra arguments go to ctest (e.g. -R mpi_np2_grad, -E kill).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

mode=normal
case "${1:-}" in
  --sanitize) mode=sanitize; shift ;;
  --tsan) mode=tsan; shift ;;
esac

"$root/scripts/setup.sh"
# The environment setup.sh made: its python and torchrun first on PATH, for ctest's commands.
source "$root/scripts/venv.sh"
ddp_use_venv
# mpirun refuses to run as root without these; harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

# Builds the unit and mpi tests with -DDDP_SANITIZE=$2 in $1 (only what they need: no
# benchmark, no examples, no NCCL backend, whose code only runs on a GPU) and runs them;
# the caller has exported the sanitizer's options. $3 names the run in the timings.
run_sanitized() {
  local build=$1 sanitize=$2 name=$3 start rc=0
  shift 3
  start=$SECONDS
  BUILD_DIR=$build "$root/scripts/build.sh" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDDP_SANITIZE="$sanitize" -DDDP_BUILD_TESTS=ON -DDDP_BUILD_BENCH=OFF -DDDP_BUILD_EXAMPLES=OFF -DDDP_WITH_NCCL=OFF
  echo "test.sh $name: build took $((SECONDS - start)) s"
  cd "$build"
  start=$SECONDS
  ctest --output-on-failure --timeout 1800 -L 'unit|mpi' "$@" || rc=$?
  echo "test.sh $name: ctest took $((SECONDS - start)) s"
  return $rc
}

case "$mode" in
  normal)
    # Tests asked for explicitly: a missing Catch2 is a configure error here, not a build
    # without tests (what a default configure does, for a library-only build).
    "$root/scripts/build.sh" -DDDP_BUILD_TESTS=ON
    cd "${BUILD_DIR:-$root/build}"
    exec ctest --output-on-failure --timeout 900 "$@"
    ;;

  sanitize)
    # The test executables are instrumented, so libasan/libubsan load first in every
    # rank; nothing is preloaded. ctest's ENVIRONMENT properties add variables and keep
    # these; mpirun hands its environment to the ranks it starts on this node.
    # detect_leaks=0: Open MPI and LibTorch keep allocations alive until exit (their
    #   singletons, thread pools, MPI's internal state); LeakSanitizer reports them.
    # abort_on_error=1: a finding kills the rank with SIGABRT, so mpirun ends the job.
    # A caller's own ASAN_OPTIONS/UBSAN_OPTIONS come last and win.
    export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:check_initialization_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
    run_sanitized "${SANITIZE_BUILD_DIR:-$root/build-sanitize}" address,undefined --sanitize "$@"
    ;;

  tsan)
    # The unit tests and the mpi tests (the reducer's hooks on the trainer's thread, the
    # MPI communication thread, the watchdog). A rank with a report exits 66 at the end
    # (all reports printed, not just the first), so mpirun and ctest fail the entry.
    # scripts/tsan.supp silences findings inside Open MPI and Catch2, each explained there.
    export TSAN_OPTIONS="second_deadlock_stack=1:suppressions=$root/scripts/tsan.supp${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
    run_sanitized "${TSAN_BUILD_DIR:-$root/build-tsan}" thread --tsan "$@"
    ;;
esac
