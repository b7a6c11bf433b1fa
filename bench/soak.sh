#!/usr/bin/env bash
# Soak run (a bench, not a ctest; 15-20 s here): the deep-supervision example for 1000 steps at
# world 3, every rank dropping a random subset of heads each step, once with
# find_unused_parameters off and once on; at the end every parameter must be
# bit-identical on all ranks. Prints the steps, the wall time and the verdict of each
# run; exits non-zero if either run fails or finds a difference.
#
#   bench/soak.sh            STEPS=1000 NP=3 SEED=1 by default; BUILD_DIR as scripts/build.sh
#
# Builds first if build/examples/deep_supervision is missing (scripts/build.sh), else
# brings that target up to date. docs/performance.md ("Soak") has a measured result.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
steps=${STEPS:-1000}
np=${NP:-3}
seed=${SEED:-1}
exe=$build/examples/deep_supervision

if [ ! -x "$exe" ]; then
  BUILD_DIR=$build "$root/scripts/build.sh" >/dev/null
else
  cmake --build "$build" -j "${JOBS:-2}" --target deep_supervision >/dev/null
fi

# mpirun refuses to run as root without these; harmless otherwise. One compute thread per
# rank, idle ranks yield (3 ranks may share fewer cores: --oversubscribe).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
# A hang fails instead of waiting: libddp's collectives time out after DDP_TIMEOUT_S, and
# each run is killed after SOAK_TIMEOUT_S (exit status 124).
export DDP_TIMEOUT_S=${DDP_TIMEOUT_S:-60}
limit=${SOAK_TIMEOUT_S:-900}

failed=0
for mode in off on; do
  flags=(--steps "$steps" --random-heads "$seed" --quiet --check-identical)
  [ "$mode" = on ] && flags+=(--find-unused)
  echo "== soak: $np ranks, $steps steps, random heads (seed $seed), find_unused_parameters $mode"
  log=$(mktemp)
  start=$(date +%s%N)
  set +e
  timeout "$limit" mpirun --oversubscribe --bind-to none -np "$np" "$exe" "${flags[@]}" >"$log" 2>&1
  rc=$?
  set -e
  wall_ms=$((($(date +%s%N) - start) / 1000000))
  if [ $rc -eq 0 ] && grep -q "^deep_supervision: $steps steps on $np ranks" "$log" &&
    grep -q "^parameters bit-identical across $np ranks" "$log"; then
    verdict="bit-identical"
    # The example's summary; libddp's logger warns once per new unused set (stderr).
    grep -E "^(deep_supervision:|parameters bit-identical)" "$log" || true
    echo "($(grep -c 'parameters that received no gradient' "$log" || true) unused-parameter warnings from libddp's logger, one per new set, 64 at most)"
  else
    verdict="FAILED (exit status $rc)"
    failed=1
    tail -n 60 "$log"
  fi
  printf 'soak find_unused_parameters=%s: %s steps, wall %d.%01d s (mpirun, including start-up): %s\n' \
    "$mode" "$steps" $((wall_ms / 1000)) $((wall_ms % 1000 / 100)) "$verdict"
  rm -f "$log"
done
if [ $failed -ne 0 ]; then
  echo "soak: FAILED"
  exit 1
fi
echo "soak: passed (both runs bit-identical)"
