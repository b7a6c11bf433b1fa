#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU and the PyPI torch wheel, builds libddp
# against that torch (NCCL from the wheel's nvidia-nccl) into build-gpu/, runs the ctest
# tests labelled `gpu`, then ddp_bench on CUDA (world 1) and, when present,
# bench/compare_torch.py's CUDA mode (PyTorch DDP with the NCCL backend, same model).
#
# Every step runs under its own time limit and the script goes on after a failure, so
# one run collects every log; the exit status is non-zero if any step failed. The whole
# run stays well inside 10 minutes. Logs go to $OUT/gpu-check/ when OUT is set, else
# build-gpu/gpu-check-logs/; a summary table ends the output (and summary.txt).
#
#   scripts/gpu-check.sh                # from the repository root
#   BUILD_DIR=build-x JOBS=8 scripts/gpu-check.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-build-gpu}
JOBS=${JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}
ITERATIONS=${ITERATIONS:-50}
# The whole run, in seconds: each step's limit is cut to what is left of it.
TOTAL_LIMIT=${TOTAL_LIMIT:-480}
if [[ -n "${OUT:-}" ]]; then
  LOG_DIR="$OUT/gpu-check"
else
  LOG_DIR="$ROOT/$BUILD_DIR/gpu-check-logs"
fi
mkdir -p "$LOG_DIR"
START=$(date +%s)

# Step name, status and seconds, for the summary.
declare -a SUMMARY=()
FAILED=0

# run_step NAME LIMIT_SECONDS COMMAND...: runs COMMAND under `timeout`, its output to
# the terminal and $LOG_DIR/NAME.log; records the outcome instead of stopping the script.
run_step() {
  local name=$1 limit=$2
  shift 2
  local log="$LOG_DIR/$name.log" t0 rc status left
  t0=$(date +%s)
  left=$((START + TOTAL_LIMIT - t0 - 5))
  if ((left < 15)); then
    skip_step "$name" "no time left of TOTAL_LIMIT=${TOTAL_LIMIT}s"
    FAILED=1
    return
  fi
  ((limit > left)) && limit=$left
  echo "==> $name (limit ${limit}s): $*" | tee "$log"
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  set -e
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMEOUT after ${limit}s"; FAILED=1 ;;
    *) status="FAILED (exit $rc)"; FAILED=1 ;;
  esac
  SUMMARY+=("$name|$status|$(($(date +%s) - t0))")
  echo "<== $name: $status" | tee -a "$log"
}

skip_step() {
  local name=$1 why=$2
  echo "==> $name: SKIPPED: $why" | tee "$LOG_DIR/$name.log"
  SUMMARY+=("$name|skipped: $why|0")
}

# shellcheck disable=SC2317  # called by the EXIT trap
print_summary() {
  {
    echo
    echo "gpu-check summary ($(($(date +%s) - START)) s; logs in $LOG_DIR)"
    printf '%-20s | %-40s | %s\n' "step" "status" "seconds"
    printf '%-20s-+-%-40s-+-%s\n' "--------------------" "----------------------------------------" "-------"
    local row
    for row in "${SUMMARY[@]}"; do
      IFS='|' read -r name status secs <<<"$row"
      printf '%-20s | %-40s | %s\n' "$name" "$status" "$secs"
    done
  } | tee "$LOG_DIR/summary.txt"
}
trap print_summary EXIT

# --- the machine ---------------------------------------------------------------
run_step machine 60 bash -c "
  nvidia-smi || echo 'nvidia-smi not found';
  '$PYTHON' -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available(), \"devices\", torch.cuda.device_count()); print(\"nccl\", torch.cuda.nccl.version() if torch.cuda.is_available() else \"?\")';
  cmake --version | head -n 1; (command -v nvcc && nvcc --version | tail -n 2) || echo 'nvcc not on PATH';
  ls /usr/include/catch2/catch.hpp 2>/dev/null || echo 'Catch2 (catch2/catch.hpp) not found: the gpu tests cannot be built'"

# --- configure and build ---------------------------------------------------------
BUILD_TESTS=ON
if [[ ! -f /usr/include/catch2/catch.hpp && -z "${Catch2_DIR:-}" ]]; then
  BUILD_TESTS=OFF
fi
CONFIGURE=(cmake -S "$ROOT" -B "$ROOT/$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DDDP_WITH_NCCL=ON
  "-DDDP_BUILD_TESTS=$BUILD_TESTS" -DDDP_BUILD_BENCH=ON -DDDP_BUILD_EXAMPLES=OFF)
run_step configure 180 "${CONFIGURE[@]}"

TARGETS=(ddp)
[[ $BUILD_TESTS == ON ]] && TARGETS+=(ddp_gpu_tests)
[[ -f "$ROOT/bench/CMakeLists.txt" ]] && grep -q ddp_bench "$ROOT/bench/CMakeLists.txt" && TARGETS+=(ddp_bench)
# One target at a time, so that a bench that does not build still leaves the tests.
for target in "${TARGETS[@]}"; do
  run_step "build-$target" 360 cmake --build "$ROOT/$BUILD_DIR" -j "$JOBS" --target "$target"
done

# --- gpu tests --------------------------------------------------------------------
if [[ $BUILD_TESTS == ON && -x "$ROOT/$BUILD_DIR/tests/gpu/ddp_gpu_tests" ]]; then
  run_step gpu-tests 300 bash -c "cd '$ROOT/$BUILD_DIR' && ctest -L gpu --output-on-failure --timeout 240"
else
  skip_step gpu-tests "ddp_gpu_tests was not built (see the build and machine logs)"
fi

# --- benchmark: libddp vs PyTorch DDP on CUDA, world 1 -------------------------------
BENCH_ARGS=(--device cuda --model mlp --iterations "$ITERATIONS")
BENCH="$ROOT/$BUILD_DIR/bench/ddp_bench"
if [[ -x "$BENCH" ]]; then
  run_step ddp-bench 120 "$BENCH" "${BENCH_ARGS[@]}"
else
  skip_step ddp-bench "$BUILD_DIR/bench/ddp_bench not built (bench/ not ready?)"
fi
if [[ -f "$ROOT/bench/compare_torch.py" ]]; then
  # World 1 through torchrun's variables, as PyTorch DDP with NCCL expects.
  run_step compare-torch 180 env RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 \
    DDP_BENCH="$BENCH" "$PYTHON" "$ROOT/bench/compare_torch.py" "${BENCH_ARGS[@]}"
else
  skip_step compare-torch "bench/compare_torch.py not present"
fi

exit $FAILED
